"""The review service's process: `python services/review/main.py`, the same as `auditoryhum serve review`.

Settings come from AUDITORYHUM_* environment variables or the dotenv file named by AUDITORYHUM_ENV_FILE; invalid
ones are one clear line and exit status 2.
"""

from auditoryhum.cli import app

if __name__ == "__main__":
    app(["serve", "review"], prog_name="auditoryhum")
