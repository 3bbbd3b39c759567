"""The clusterer service's process: `python services/clusterer/main.py`, the same as `auditoryhum serve clusterer`.

Settings come from AUDITORYHUM_* environment variables or the dotenv file named by AUDITORYHUM_ENV_FILE; invalid
ones are one clear line and exit status 2.
"""

from auditoryhum.cli import app

if __name__ == "__main__":
    app(["serve", "clusterer"], prog_name="auditoryhum")
