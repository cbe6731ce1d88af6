-- The legacy European cache registry's tables as its Flask-SQLAlchemy models and Alembic created
-- them (column lists: research notes ecr.md section 2), written for the import tests. What matters
-- for the import is kept as the legacy had it: no unique constraint on natural keys, naive
-- timestamps for links and old companies, an enum for user types, a link table without a key,
-- and tables we do not carry over (stock, alembic_version).

CREATE TYPE usertype AS ENUM (
    'AUDITOR_ORG_FGAS', 'AUDITOR_ORG_AND_VERIFIER', 'AUDITOR_ORG_ONLY_VERIFIER',
    'ORGANISATION_USER', 'EUONLYREPRESENTATIVE_USER'
);

CREATE TABLE alembic_version (version_num varchar(32) PRIMARY KEY);

CREATE TABLE country (
    id serial PRIMARY KEY,
    code varchar(10),
    name varchar(255),
    type varchar(64)
);

CREATE TABLE address (
    id serial PRIMARY KEY,
    street varchar(255),
    number varchar(64),
    zipcode varchar(64),
    city varchar(255),
    country_id integer REFERENCES country (id)
);

CREATE TABLE represent (
    id serial PRIMARY KEY,
    name varchar(255),
    address_id integer REFERENCES address (id),
    vatnumber varchar(255),
    contact_first_name varchar(255),
    contact_last_name varchar(255),
    contact_email varchar(255)
);

CREATE TABLE type (
    id serial PRIMARY KEY,
    type varchar(255),
    domain varchar(32)
);

CREATE TABLE businessprofile (
    id serial PRIMARY KEY,
    highleveluses varchar(255),
    code varchar(255),
    short_code varchar(16),
    domain varchar(32)
);

CREATE TABLE old_company (
    id serial PRIMARY KEY,
    external_id integer,
    name varchar(255),
    country_code varchar(10),
    account varchar(255),
    vat_number varchar(32),
    eori varchar(32),
    active boolean,
    website varchar(255),
    date_registered timestamp,
    valid boolean,
    obligation varchar(32)
);

CREATE TABLE undertaking (
    id serial PRIMARY KEY,
    external_id integer,
    registration_id varchar(255),
    name varchar(255),
    address_id integer REFERENCES address (id),
    website varchar(255),
    phone varchar(32),
    domain varchar(32),
    date_created date,
    date_updated date,
    date_created_in_ecr date,
    date_updated_in_ecr date,
    status varchar(64),
    country_code varchar(10),
    country_code_orig varchar(10),
    undertaking_type varchar(32),
    vat varchar(255),
    eori_number varchar(255),
    represent_id integer REFERENCES represent (id),
    oldcompany_verified boolean,
    oldcompany_account varchar(255),
    oldcompany_extid integer,
    oldcompany_id integer REFERENCES old_company (id),
    check_passed boolean
);

CREATE TABLE "user" (
    id serial PRIMARY KEY,
    ecas_id varchar(255),
    username varchar(255) UNIQUE,
    first_name varchar(255),
    last_name varchar(255),
    email varchar(255),
    type usertype
);

CREATE TABLE undertaking_types (
    undertaking_id integer NOT NULL REFERENCES undertaking (id),
    type_id integer NOT NULL REFERENCES type (id),
    PRIMARY KEY (undertaking_id, type_id)
);

CREATE TABLE undertaking_businessprofile (
    undertaking_id integer NOT NULL REFERENCES undertaking (id),
    businessprofile_id integer NOT NULL REFERENCES businessprofile (id),
    PRIMARY KEY (undertaking_id, businessprofile_id)
);

-- No primary key in the legacy: the same pair can be there twice.
CREATE TABLE undertaking_users (
    user_id integer NOT NULL REFERENCES "user" (id),
    undertaking_id integer NOT NULL REFERENCES undertaking (id)
);

CREATE TABLE undertaking_represent_history (
    undertaking_id integer NOT NULL REFERENCES undertaking (id),
    represent_id integer NOT NULL REFERENCES represent (id),
    PRIMARY KEY (undertaking_id, represent_id)
);

CREATE TABLE undertaking_country_history (
    undertaking_id integer NOT NULL REFERENCES undertaking (id),
    country_id integer NOT NULL REFERENCES country (id),
    PRIMARY KEY (undertaking_id, country_id)
);

CREATE TABLE old_company_link (
    oldcompany_id integer NOT NULL REFERENCES old_company (id),
    undertaking_id integer NOT NULL REFERENCES undertaking (id),
    verified boolean,
    date_added timestamp,
    date_verified timestamp,
    PRIMARY KEY (oldcompany_id, undertaking_id)
);

CREATE TABLE matching_log (
    id serial PRIMARY KEY,
    timestamp timestamptz,
    "user" varchar(255),
    domain varchar(32),
    company_id integer,
    oldcompany_id integer,
    oldcompany_account varchar(255),
    verified boolean
);

CREATE TABLE organization_log (
    id serial PRIMARY KEY,
    domain varchar(32),
    execution_time timestamptz,
    using_last_update date,
    organizations integer
);

CREATE TABLE mail_address (
    id serial PRIMARY KEY,
    mail varchar(255) UNIQUE,
    timestamp timestamptz,
    first_name varchar(255),
    last_name varchar(255)
);

CREATE TABLE delivery_licence (
    id serial PRIMARY KEY,
    year integer,
    date_created date,
    date_updated date,
    updated_since date,
    undertaking_id integer REFERENCES undertaking (id)
);

CREATE TABLE substance (
    id serial PRIMARY KEY,
    year integer,
    substance varchar(100),
    lic_use_kind varchar(100),
    lic_use_desc varchar(100),
    lic_type varchar(50),
    s_orig_country_name varchar(100),
    quantity double precision,
    organization_country_name varchar(4),
    date_created date,
    date_updated date,
    delivery_id integer REFERENCES delivery_licence (id)
);

CREATE TABLE licence (
    id serial PRIMARY KEY,
    year integer,
    licence_id integer,
    chemical_name varchar(100),
    organization_country_name varchar(4),
    organization_country_name_orig varchar(100),
    custom_procedure_name varchar(100),
    international_party_country_name varchar(100),
    international_party_country_name_orig varchar(100),
    total_odp_mass double precision,
    net_mass double precision,
    licence_state varchar(50),
    long_licence_number varchar(50),
    template_detailed_use_code varchar(255),
    licence_type varchar(50),
    mixture_nature_type varchar(50),
    date_created date,
    date_updated date,
    updated_since varchar(30),
    substance_id integer REFERENCES substance (id)
);

CREATE TABLE substance_name_conversion (
    id serial PRIMARY KEY,
    ec_substance_name varchar(100),
    corrected_name varchar(100)
);

CREATE TABLE country_codes_conversion (
    id serial PRIMARY KEY,
    country_name_short_en varchar(100),
    country_code_alpha2 varchar(5)
);

CREATE TABLE licence_details_conversion (
    id serial PRIMARY KEY,
    template_detailed_use_code varchar(250),
    lic_use_kind varchar(100),
    lic_use_desc varchar(100),
    lic_type varchar(100)
);

-- Not carried over (no counterpart here).
CREATE TABLE stock (
    year integer NOT NULL,
    type varchar(255) NOT NULL,
    substance_name_form varchar(255) NOT NULL,
    code varchar(255) NOT NULL,
    is_virgin boolean,
    result integer,
    undertaking_id integer REFERENCES undertaking (id),
    PRIMARY KEY (year, type, substance_name_form, code)
);
