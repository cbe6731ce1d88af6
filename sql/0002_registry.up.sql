-- Registry cache tables, with the legacy service's table and column names so that existing SQL
-- against its database keeps working. Differences from the legacy schema, all additive:
--   * natural-key unique constraints the legacy code only assumed (undertaking per domain,
--     country code, user name, delivery per company and year, licence per year and chemical);
--   * old_company is keyed by (external_id, obligation): BDR numbers its registries separately;
--   * sync bookkeeping: check_messages, source_hash (skip unchanged records), bdr_due /
--     bdr_synced_at / bdr_error, sync_rejection;
--   * old_company_link remembers why it was proposed (score, rule).

CREATE TABLE registry.country (
    id serial PRIMARY KEY,
    code varchar(10) NOT NULL UNIQUE,
    name varchar(255),
    type varchar(64)
);

CREATE TABLE registry.address (
    id serial PRIMARY KEY,
    street varchar(255),
    number varchar(64),
    zipcode varchar(64),
    city varchar(255),
    country_id integer REFERENCES registry.country (id)
);

CREATE TABLE registry.represent (
    id serial PRIMARY KEY,
    name varchar(255),
    address_id integer REFERENCES registry.address (id),
    vatnumber varchar(255),
    contact_first_name varchar(255),
    contact_last_name varchar(255),
    contact_email varchar(255)
);

-- Reference tables keep the ids of the bundled legacy fixtures (which repeat some codes).
CREATE TABLE registry.type (
    id integer PRIMARY KEY,
    type varchar(255) NOT NULL,
    domain varchar(32) NOT NULL
);

CREATE TABLE registry.businessprofile (
    id integer PRIMARY KEY,
    highleveluses varchar(255) NOT NULL,
    code varchar(255),
    short_code varchar(16),
    domain varchar(32) NOT NULL
);

CREATE TABLE registry.old_company (
    id serial PRIMARY KEY,
    external_id integer NOT NULL,
    name varchar(255),
    country_code varchar(10),
    account varchar(255),
    vat_number varchar(32),
    eori varchar(32),
    active boolean,
    website varchar(255),
    date_registered timestamp,
    valid boolean NOT NULL DEFAULT true,
    obligation varchar(32) NOT NULL,
    UNIQUE (external_id, obligation)
);

CREATE TABLE registry.undertaking (
    id serial PRIMARY KEY,
    external_id integer NOT NULL,
    registration_id varchar(255) NOT NULL DEFAULT '',
    name varchar(255),
    address_id integer REFERENCES registry.address (id),
    website varchar(255),
    phone varchar(32),
    domain varchar(32) NOT NULL DEFAULT 'FGAS',
    date_created date,
    date_updated date,
    date_created_in_ecr date NOT NULL DEFAULT current_date,
    date_updated_in_ecr date,
    status varchar(64),
    country_code varchar(10) NOT NULL DEFAULT '',
    country_code_orig varchar(10),
    undertaking_type varchar(32),
    vat varchar(255),
    eori_number varchar(255) NOT NULL DEFAULT '',
    represent_id integer REFERENCES registry.represent (id),
    oldcompany_verified boolean NOT NULL DEFAULT false,
    oldcompany_account varchar(255),
    oldcompany_extid integer,
    oldcompany_id integer REFERENCES registry.old_company (id),
    check_passed boolean,
    -- additions
    check_messages jsonb NOT NULL DEFAULT '[]',
    source_hash varchar(40),
    bdr_due boolean NOT NULL DEFAULT false,
    bdr_synced_at timestamptz,
    bdr_error text,
    UNIQUE (external_id, domain)
);
CREATE INDEX undertaking_unverified ON registry.undertaking (domain) WHERE NOT oldcompany_verified;
CREATE INDEX undertaking_bdr_due ON registry.undertaking (id) WHERE bdr_due;

CREATE TABLE registry."user" (
    id serial PRIMARY KEY,
    ecas_id varchar(255),
    username varchar(255) NOT NULL UNIQUE,
    first_name varchar(255),
    last_name varchar(255),
    email varchar(255),
    type varchar(64)
);

CREATE TABLE registry.undertaking_types (
    undertaking_id integer NOT NULL REFERENCES registry.undertaking (id) ON DELETE CASCADE,
    type_id integer NOT NULL REFERENCES registry.type (id),
    PRIMARY KEY (undertaking_id, type_id)
);

CREATE TABLE registry.undertaking_businessprofile (
    undertaking_id integer NOT NULL REFERENCES registry.undertaking (id) ON DELETE CASCADE,
    businessprofile_id integer NOT NULL REFERENCES registry.businessprofile (id),
    PRIMARY KEY (undertaking_id, businessprofile_id)
);

CREATE TABLE registry.undertaking_users (
    undertaking_id integer NOT NULL REFERENCES registry.undertaking (id) ON DELETE CASCADE,
    user_id integer NOT NULL REFERENCES registry."user" (id) ON DELETE CASCADE,
    PRIMARY KEY (undertaking_id, user_id)
);

CREATE TABLE registry.undertaking_represent_history (
    undertaking_id integer NOT NULL REFERENCES registry.undertaking (id) ON DELETE CASCADE,
    represent_id integer NOT NULL REFERENCES registry.represent (id),
    PRIMARY KEY (undertaking_id, represent_id)
);

CREATE TABLE registry.undertaking_country_history (
    undertaking_id integer NOT NULL REFERENCES registry.undertaking (id) ON DELETE CASCADE,
    country_id integer NOT NULL REFERENCES registry.country (id),
    PRIMARY KEY (undertaking_id, country_id)
);

CREATE TABLE registry.old_company_link (
    oldcompany_id integer NOT NULL REFERENCES registry.old_company (id) ON DELETE CASCADE,
    undertaking_id integer NOT NULL REFERENCES registry.undertaking (id) ON DELETE CASCADE,
    verified boolean NOT NULL DEFAULT false,
    date_added timestamptz NOT NULL DEFAULT now(),
    date_verified timestamptz,
    score real,
    rule varchar(16),
    PRIMARY KEY (oldcompany_id, undertaking_id)
);

CREATE TABLE registry.matching_log (
    id serial PRIMARY KEY,
    timestamp timestamptz NOT NULL DEFAULT now(),
    "user" varchar(255),
    domain varchar(32),
    company_id integer,
    oldcompany_id integer,
    oldcompany_account varchar(255),
    verified boolean
);

CREATE TABLE registry.organization_log (
    id serial PRIMARY KEY,
    domain varchar(32),
    execution_time timestamptz NOT NULL DEFAULT now(),
    using_last_update date,
    organizations integer,
    -- additions: what the run did, for the sync log and the operators
    fetched integer,
    inserted integer,
    updated integer,
    rejected integer,
    failed_checks integer,
    run_id varchar(64)
);

CREATE TABLE registry.mail_address (
    id serial PRIMARY KEY,
    mail varchar(255) NOT NULL UNIQUE,
    timestamp timestamptz NOT NULL DEFAULT now(),
    first_name varchar(255),
    last_name varchar(255)
);

CREATE TABLE registry.sync_rejection (
    id serial PRIMARY KEY,
    run_id varchar(64),
    domain varchar(32) NOT NULL,
    external_id varchar(64),
    reason text NOT NULL,
    payload jsonb,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX sync_rejection_created ON registry.sync_rejection (created_at);

CREATE TABLE registry.delivery_licence (
    id serial PRIMARY KEY,
    year integer NOT NULL,
    undertaking_id integer NOT NULL REFERENCES registry.undertaking (id) ON DELETE CASCADE,
    updated_since date,
    date_created date NOT NULL DEFAULT current_date,
    date_updated date,
    UNIQUE (undertaking_id, year)
);

CREATE TABLE registry.substance (
    id serial PRIMARY KEY,
    year integer NOT NULL,
    substance varchar(255),
    lic_use_kind varchar(255),
    lic_use_desc varchar(255),
    lic_type varchar(255),
    s_orig_country_name varchar(255),
    organization_country_name varchar(10),
    quantity double precision NOT NULL DEFAULT 0,
    delivery_id integer NOT NULL REFERENCES registry.delivery_licence (id) ON DELETE CASCADE,
    patched boolean NOT NULL DEFAULT false,  -- addition: a PATCH_LICENCES entry, not an aggregate
    date_created date NOT NULL DEFAULT current_date,
    date_updated date
);

CREATE TABLE registry.licence (
    id serial PRIMARY KEY,
    year integer NOT NULL,
    licence_id integer NOT NULL,
    chemical_name varchar(255) NOT NULL,
    organization_country_name varchar(10),
    organization_country_name_orig varchar(255),
    custom_procedure_name varchar(255),
    international_party_country_name varchar(100),
    international_party_country_name_orig varchar(255),
    total_odp_mass double precision,
    net_mass double precision,
    licence_state varchar(64),
    long_licence_number varchar(255),
    template_detailed_use_code varchar(255),
    licence_type varchar(64),
    mixture_nature_type varchar(64),
    updated_since varchar(64),
    substance_id integer REFERENCES registry.substance (id) ON DELETE SET NULL,
    date_created date NOT NULL DEFAULT current_date,
    date_updated date,
    UNIQUE (licence_id, year, chemical_name)
);

CREATE TABLE registry.substance_name_conversion (
    id integer PRIMARY KEY,
    ec_substance_name varchar(255) NOT NULL,
    corrected_name varchar(255) NOT NULL
);

CREATE TABLE registry.country_codes_conversion (
    id integer PRIMARY KEY,
    country_name_short_en varchar(255) NOT NULL,
    country_code_alpha2 varchar(10) NOT NULL
);

CREATE TABLE registry.licence_details_conversion (
    id integer PRIMARY KEY,
    template_detailed_use_code varchar(255) NOT NULL,
    lic_use_kind varchar(255),
    lic_use_desc varchar(255),
    lic_type varchar(255)
);

CREATE TABLE registry.licence_rejection (
    id serial PRIMARY KEY,
    run_id varchar(64),
    year integer NOT NULL,
    organization_id integer,
    licence_id integer,
    reason text NOT NULL,
    payload jsonb,
    created_at timestamptz NOT NULL DEFAULT now()
);
