-- Back to 0009: the data store API's clients and nonces go.
DROP TABLE IF EXISTS datastore.hawk_nonce;
DROP TABLE IF EXISTS datastore.hawk_users;
