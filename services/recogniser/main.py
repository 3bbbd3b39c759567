"""The recogniser service's process: `python services/recogniser/main.py`, the same as `auditoryhum serve recogniser`.

Settings come from AUDITORYHUM_* environment variables or the dotenv file named by AUDITORYHUM_ENV_FILE
(AUDITORYHUM_RECOGNISER_DIR is required); invalid ones, or a MODEL_DIR without the model, are one clear line and
exit status 2.
"""

from auditoryhum.cli import app

if __name__ == "__main__":
    app(["serve", "recogniser"], prog_name="auditoryhum")
