"""The labeler service's process: `python services/labeler/main.py`, the same as `auditoryhum serve labeler`.

Settings come from AUDITORYHUM_* environment variables or the dotenv file named by AUDITORYHUM_ENV_FILE; invalid
ones are one clear line and exit status 2.
"""

from auditoryhum.cli import app

if __name__ == "__main__":
    app(["serve", "labeler"], prog_name="auditoryhum")
