"""Which fleet a command looks at: --db, TINYMLOPS_FLEET_DB, the fleet the demo recorded, else <home>/fleet.db.

After `make demo` the demo's fleet lives in <home>/rollout-demo/fleet.db; the demo records it in <home>/fleet.json
so `tinymlops fleet devices`, `rollout status` and `drift` default to it, and say so on stderr.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli import app
from tinymlops import settings
from tinymlops.fleet import store
from tinymlops.fleet.store import Device


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("TINYMLOPS_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("TINYMLOPS_FLEET_DB", raising=False)
    monkeypatch.delenv("TINYMLOPS_FLEET_URL", raising=False)
    return tmp_path / "home"


def _demo_fleet(home: Path) -> str:
    """What the rollout demo leaves behind: a fleet DB under rollout-demo/ with devices, recorded as the fleet."""
    url = f"sqlite:///{home / 'rollout-demo' / 'fleet.db'}"
    st = store.open_store(url)
    with st.session() as s:
        s.add(Device(id="raspberry-pi-4-0000", target="raspberry-pi-4", cohort="raspberry-pi-4", labels={},
                     credential_hash="x", samples_opt_in=False, feedback_opt_in=True, enrolled_unix_s=time.time(),
                     last_seen_unix_s=time.time(), revoked=False))
    st.dispose()
    settings.record_fleet_db(url, "the rollout demo")
    return url


def _run(*args: str) -> tuple[int, str, str]:
    r = CliRunner().invoke(app, list(args))
    return r.exit_code, r.stdout, r.stderr


def test_without_a_recorded_fleet_the_default_is_home_fleet_db(home: Path) -> None:
    assert settings.fleet_db_choice() == (f"sqlite:///{home / 'fleet.db'}", "default")
    code, _, err = _run("fleet", "devices", "--json")
    assert code == 2 and "no fleet database" in err and "fleet.db" in err


def test_commands_default_to_the_fleet_the_demo_recorded(home: Path) -> None:
    url = _demo_fleet(home)
    assert settings.fleet_db_url() == url and store.default_url() == url
    assert json.loads((home / "fleet.json").read_text())["db"] == url
    code, out, err = _run("fleet", "devices", "--json")
    assert code == 0, err
    assert [d["id"] for d in json.loads(out)] == ["raspberry-pi-4-0000"]
    assert url in err and "recorded in" in err  # the user sees which fleet this is
    code, out, err = _run("rollout", "status", "--json")
    assert code == 0 and url in err, err
    code, out, err = _run("drift", "no-such-model", "--no-prefect", "--no-log", "--json")
    assert url in err and "recorded in" in err, err  # drift names the fleet it reads before anything else
    with store.open_store().session() as s:  # what the library opens by default
        assert s.get(Device, "raspberry-pi-4-0000") is not None


def test_flag_and_environment_beat_the_recorded_fleet(home: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    _demo_fleet(home)
    other = f"sqlite:///{tmp_path / 'other.db'}"
    store.open_store(other).dispose()
    code, out, err = _run("fleet", "devices", "--json", "--db", other)
    assert code == 0 and json.loads(out) == [] and "--db" in err
    monkeypatch.setenv("TINYMLOPS_FLEET_DB", other)
    assert settings.fleet_db_choice() == (other, "TINYMLOPS_FLEET_DB")
    assert settings.fleet_db_url("sqlite:///x.db") == "sqlite:///x.db"


def test_a_recorded_fleet_whose_file_is_gone_is_ignored(home: Path) -> None:
    url = _demo_fleet(home)
    Path(url.removeprefix("sqlite:///")).unlink()
    assert settings.fleet_db_choice() == (f"sqlite:///{home / 'fleet.db'}", "default")


def test_the_demo_records_the_fresh_fleet_it_creates(home: Path) -> None:
    from tinymlops.sim.demo import fresh_fleet

    (home / "rollout-demo").mkdir(parents=True)
    (home / "rollout-demo" / "stale.txt").write_text("old devices")
    url, st, token = fresh_fleet(home / "rollout-demo")
    st.dispose()
    assert url == f"sqlite:///{home / 'rollout-demo' / 'fleet.db'}" and token.startswith("tmo_op_")
    assert not (home / "rollout-demo" / "stale.txt").exists()
    assert settings.fleet_db_choice()[0] == url and "rollout demo" in settings.fleet_db_choice()[1]
