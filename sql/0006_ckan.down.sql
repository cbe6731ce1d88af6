-- Back to 0005: the CKAN packager's tables go (the schema itself belongs to 0001).
DROP TABLE IF EXISTS ckan.totals;
DROP TABLE IF EXISTS ckan.errors;
DROP TABLE IF EXISTS ckan.requests;
DROP TABLE IF EXISTS ckan.package_request;
DROP TABLE IF EXISTS ckan.package;
