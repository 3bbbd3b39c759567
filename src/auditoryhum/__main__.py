from auditoryhum.cli import app

app(prog_name="auditoryhum")
