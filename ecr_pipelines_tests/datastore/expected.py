"""Rows the legacy's tests expect from the fixture files, shared by the reader and load tests."""

REFERENCE_ROWS = [
    (
        "AB10 1AA",
        "S12000033",
        "Aberdeen City",
        "S99999999",
        None,
        "S99999999",
        None,
        "S99999999",
        "Scotland",
        "394251",
        "0806376",
        "2011-09-01",
        "2016-10-01",
    ),
    (
        "HU4 7SW",
        "E06000011",
        "East Riding of Yorkshire",
        "E37000018",
        "Humber",
        "E37000039",
        "York, North Yorkshire and East Riding",
        "E12000003",
        "Yorkshire and The Humber",
        "504860",
        "0429160",
        "1980-01-01",
        None,
    ),
]
