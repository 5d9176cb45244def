-- Run once by geode db serve, on the database's first start: the schema, and the one user, the
-- warehouse, who logs in with its certificate from the manifest (secrets.warehouse_db).
CREATE DATABASE bookstore;
CREATE TABLE bookstore.stock (title VARCHAR(200) PRIMARY KEY, copies INT NOT NULL);
CREATE TABLE bookstore.shipments (
  id BIGINT AUTO_INCREMENT PRIMARY KEY,
  title VARCHAR(200) NOT NULL,
  shipped_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP
);
CREATE USER 'bookwarehouse'@'%'
  REQUIRE SUBJECT '/CN=bookwarehouse' AND ISSUER '/O=Geode/CN=Geode Root CA';
GRANT SELECT, INSERT, UPDATE ON bookstore.* TO 'bookwarehouse'@'%';
