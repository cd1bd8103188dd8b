"""A module that reads the program's flags and environment when it is imported, as many do."""

import os
import sys

FLAG = next((a.split("=", 1)[1] for a in sys.argv if a.startswith("--mode=")), None)
ENV = os.environ.get("BIGACTOR_IMPORT_TIME")


class Reader:
    """Reports what the module saw at import time on this machine."""

    def seen(self) -> tuple[str | None, str | None]:
        return FLAG, ENV
