"""`make install`'s translation of pip's configuration for uv (tools/pip_to_uv.py)."""
import subprocess, sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[1] / "tools"))
from pip_to_uv import settings, uv_args  # noqa: E402

LISTING = """global.extra-index-url='file:///a/simple file:///b/simple'
global.find-links='/wheels'
global.constraint='/etc/pip/constraints.txt'
global.index-url='https://mirror.example/simple'
:env:.find-links='/env-wheels'
:env:.default-timeout='180'
"""


def test_pip_settings_become_uv_arguments_with_the_environment_first():
    conf = settings(LISTING)
    assert conf["find-links"] == "/env-wheels"  # PIP_FIND_LINKS overrides the file, as in pip
    assert uv_args(conf) == ["--index-strategy", "unsafe-best-match", "--index-url", "https://mirror.example/simple",
                             "--extra-index-url", "file:///a/simple", "--extra-index-url", "file:///b/simple",
                             "--find-links", "/env-wheels", "--constraint", "/etc/pip/constraints.txt"]
    assert uv_args(settings("")) == ["--index-strategy", "unsafe-best-match"]
    assert uv_args(settings("global.no-index='true'"))[-1] == "--no-index"


def test_it_reads_this_machines_pip(tmp_path):
    conf = tmp_path / "pip.conf"
    conf.write_text("[global]\nfind-links = /some/wheels\nconstraint = /some/c.txt\n")
    env = {"PIP_CONFIG_FILE": str(conf), "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, str(Path(__file__).parents[1] / "tools" / "pip_to_uv.py"),
                          str(Path(sys.executable).parent / "pip")], capture_output=True, text=True, env=env)
    assert out.returncode == 0 and "--find-links /some/wheels" in out.stdout and "--constraint /some/c.txt" in out.stdout
