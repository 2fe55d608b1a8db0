"""Write the CLI help and OpenAPI snapshots (run once, before the layout change)."""
import contextlib, io, json, os, sys
from pathlib import Path
os.environ["COLUMNS"] = "100"
out = Path("tests/snapshots")
from gru4rec.cli import main
helps = {}
for cmd in ["", "prepare", "synth", "train", "evaluate", "compare", "tune", "export", "serve"]:
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), contextlib.suppress(SystemExit):
        main(([cmd] if cmd else []) + ["--help"])
    helps[cmd or "gru4rec"] = buf.getvalue()
(out / "cli_help.json").write_text(json.dumps(helps, indent=1, sort_keys=True) + "\n")
from service.app import create_app
from service.settings import Settings
schema = create_app(Settings(model_dir=None)).openapi()
(out / "openapi.json").write_text(json.dumps(schema, indent=1, sort_keys=True) + "\n")
print({k: len(v) for k, v in helps.items()})
