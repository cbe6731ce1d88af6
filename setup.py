from setuptools import find_namespace_packages, setup

setup(
    name="ecr_pipelines",
    version="0.1.0",
    description=(
        "One Dagster code location replacing the registry cache, IATI refresher, CKAN packager, "
        "data store service and energy data hub."
    ),
    python_requires=">=3.11,<3.13",
    # Namespace discovery lists the data-only folders (iati/schemas, registry/data, ...) as packages:
    # setuptools warns that it will stop shipping data of folders missing from `packages`.
    packages=find_namespace_packages(include=["ecr_pipelines", "ecr_pipelines.*"], exclude=["*.__pycache__"]),
    include_package_data=True,
    package_data={
        # Reference tables, schemas, Solr field lists, stand-in recordings and their attributions
        # (the recordings live in ecr_pipelines/dev, which the Docker image leaves out).
        "ecr_pipelines": [
            "**/*.json",
            "**/*.xml",
            "**/*.xsd",
            "**/*.yaml",
            "**/*.txt",
            "**/*.tsv",
            "**/*.md",
            "**/*.pdf",
            "**/*.csv",
        ]
    },
    install_requires=[
        # dagster and the webserver move together; the integrations follow the matching 0.x line.
        "dagster==1.13.27",
        "dagster-webserver==1.13.27",
        "dagster-postgres==0.29.27",
        "dagster-aws==0.29.27",
        "pandas>=2.2",
        "sqlalchemy>=2.0,<2.2",
        # One driver for every URL (see resources/database.py); psycopg 3 is deliberately absent.
        "psycopg2-binary>=2.9",
        "pgserver==0.1.4",
        "rapidfuzz>=3.9",
        "lxml>=5.2",
        "pysolr>=3.10",
        "requests>=2.32",
        "urllib3>=2.2",
        "charset-normalizer>=3.3",
        "python-dateutil>=2.9",
        "PyYAML>=6",
        # Reads the .env that `python -m ecr_pipelines env` writes (dagster depends on it too).
        "python-dotenv>=1.0",
        "boto3>=1.34",
        # CKAN packager: fast JSON pages, streaming XLSX.
        "orjson>=3.10",
        "XlsxWriter>=3.2",
        # CKAN statistics: the legacy's per-domain bcrypt anonymisation of e-mail addresses.
        "bcrypt>=4.1",
        # Data store: HAWK signatures of the data-flow calls (the library the legacy used).
        "mohawk>=1.1",
        # Energy hub: ledger addresses of a metering point's measurements (BIP32 child public keys).
        "bip32>=4.0",
        # The HTTP contracts: Starlette (with dagster-webserver) reads posted forms through it.
        "python-multipart>=0.0.20",
    ],
    extras_require={
        "dev": [
            "pytest>=8",
            # `make test` spreads the suite over two workers (see the Makefile).
            "pytest-xdist>=3.8",
            "moto[server]>=5.0",
            "aiosmtpd>=1.4",
            "ruff>=0.6",
            "openpyxl>=3.1",
        ],
    },
    entry_points={"console_scripts": ["ecr-pipelines=ecr_pipelines.__main__:main"]},
)
