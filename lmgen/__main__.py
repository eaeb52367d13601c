from lmgen.cli import app

app(prog_name="lmgen")
