"""The clusterer service's process: `python services/clusterer/main.py` (same as `auditoryhum serve clusterer`).

Settings come from AUDITORYHUM_* environment variables or the dotenv file named by AUDITORYHUM_ENV_FILE.
"""

from auditoryhum.service.app import main

if __name__ == "__main__":
    main("clusterer")
