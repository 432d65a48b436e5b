import re
import subprocess
import sys
import tomllib

import yaml

from pipelines.config import PROJECT_ROOT

ROOT = PROJECT_ROOT


def test_environment_yml_matches_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = set(project["dependencies"])
    for extra in ("notebooks", "dev"):
        wanted |= set(project["optional-dependencies"][extra])
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    assert "-e ." in pip
    assert set(pip) - {"-e ."} == wanted
    assert "python=3.11" in env["dependencies"]
    assert project["requires-python"].startswith(">=3.11")


def test_ci_runs_exactly_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    first_block = re.search(r"```(?:bash|sh)?\n(.*?)```", readme, re.S).group(1)
    commands = [line.split("#")[0].strip() for line in first_block.splitlines() if line.split("#")[0].strip()]
    assert len(commands) == 2, commands  # the main job, then the tests
    ci = [l.strip() for l in (ROOT / ".ci" / "run").read_text().splitlines()
          if l.strip() and not l.startswith("#") and not l.startswith(("set ", "cd "))]
    assert ci == [commands[1]]


def test_cli_entry_point_and_clear_errors():
    study = [sys.executable, "-m", "pipelines.cli"]
    ok = subprocess.run([*study, "config", "--preset", "ci"], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert "ingest:" in ok.stdout and "# derived" in ok.stdout
    bad = subprocess.run([*study, "ingest", "--preset", "nope"], capture_output=True, text=True)
    assert bad.returncode == 2
    assert "unknown preset 'nope'" in bad.stderr and "Traceback" not in bad.stderr


def test_openmp_threads_wait_passively_unless_the_user_says_otherwise():
    import subprocess
    import sys

    code = "import pipelines.cli, os; print(os.environ['OMP_WAIT_POLICY'])"
    env = {k: v for k, v in __import__("os").environ.items() if k != "OMP_WAIT_POLICY"}
    assert subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True).stdout.strip() == "PASSIVE"
    env["OMP_WAIT_POLICY"] = "ACTIVE"
    assert subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True).stdout.strip() == "ACTIVE"
