"""``python -m tests.held_server FLAG --port P``: a real ``vitalcast serve`` (settings from the
environment, migrations applied) whose computes that start while the file FLAG exists hold their
lease until it is gone, so a test can kill the server after an ingest committed and before its
compute saved anything."""

from __future__ import annotations

import argparse
from pathlib import Path

import uvicorn

from tests.doubles import held_while_aggregator
from vitalcast.app import create_app
from vitalcast.db.migrate import upgrade
from vitalcast.observability import configure_logging
from vitalcast.settings import Settings
from vitalcast.wiring import Seams


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("flag", type=Path)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    settings = Settings()
    configure_logging(settings.log_level)
    upgrade(settings.resolved_database_url)
    application = create_app(settings, Seams(aggregator=held_while_aggregator(args.flag)))
    uvicorn.run(application, host="127.0.0.1", port=args.port, log_config=None, access_log=False)


if __name__ == "__main__":
    main()
