"""The ledger's database backend (``service.ledger.sql.SqlLedger``), tables and audit log."""
