"""A database client service: under ``geode run`` it connects to the Geode database with its
certificate secret, runs the SQL statements given as arguments and prints one JSON line."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pymysql

from geode.db import client_ssl_context


def main(statements: list[str]) -> None:
    secrets = Path(os.environ["GEODE_SECRETS_DIR"])
    context = client_ssl_context(
        secrets / "db-client.pem",
        secrets / "db-client.key",
        ca_file=os.environ["GEODE_CA_FILE"],
        servers=[os.environ["DB_SERVER_ID"]],
    )
    host, port = os.environ["DB_ADDR"].rsplit(":", 1)
    try:
        with (
            pymysql.connect(
                host=host, port=int(port), user=os.environ["DB_USER"], ssl=context, database="shop"
            ) as conn,
            conn.cursor() as cursor,
        ):
            rows = []
            for statement in statements:
                cursor.execute(statement)
                rows = [list(row) for row in cursor.fetchall()]
            conn.commit()
    except pymysql.err.MySQLError as exc:
        print(json.dumps({"error": exc.args[0] if exc.args else 0}))
        return
    print(json.dumps({"rows": rows}))


if __name__ == "__main__":
    main(sys.argv[1:])
