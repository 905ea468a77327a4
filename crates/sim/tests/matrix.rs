#![allow(clippy::unwrap_used)]
//! `sim matrix`, `sim merge` and `sim compare` end to end, in real namespaces with real
//! agents (root; CI runs as root, and without root these tests fail loudly rather than skip).

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

mod common;
use common::*;

/// Run a `sim` command to its end; also return its PID (its namespaces carry it).
fn run(cmd: &mut Command) -> (Output, u32) {
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    (child.wait_with_output().unwrap(), pid)
}

/// Temporary folders of a sim process that are still there.
fn workdirs_of(pid: u32) -> Vec<String> {
    let prefix = format!("natscope-matrix-{pid}-");
    std::fs::read_dir(std::env::temp_dir())
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.starts_with(&prefix))
        .collect()
}

fn read(p: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

/// Endpoint-independent against address-and-port-dependent mapping, with and without TURN:
/// direct over server-reflexive, direct over peer-reflexive, relayed, and no connection.
const SMALL: &str = r#"
name = "small"
[matrix]
rows = ["eim-eif", "apdm-apdf"]
modes = ["trickle", "vanilla"]
turn = ["none", "udp"]
timeout = "6s"
"#;

fn cell<'a>(m: &'a Value, id: &str) -> &'a Value {
    m["cells"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == id)
        .unwrap_or_else(|| panic!("no cell {id}"))
}

#[test]
fn a_matrix_runs_agrees_with_the_oracle_and_shards_merge_to_the_same_cells() {
    require_root();
    let dir = tempdir("matrix-small");
    let file = dir.join("small.toml");
    std::fs::write(&file, SMALL).unwrap();
    let reports = dir.join("reports");
    let (o, pid) = run(sim()
        .arg("matrix")
        .arg(&file)
        .arg("--reports")
        .arg(&reports)
        .arg("--strict"));
    assert!(o.status.success(), "{}", text(&o));
    // Every cell's namespaces, agents and signaling files are gone.
    assert_eq!(sim_namespaces_of(pid), Vec::<String>::new());
    assert_eq!(workdirs_of(pid), Vec::<String>::new());
    let m = read(&reports.join("small/matrix.json"));
    assert_eq!(m["schema_version"], 1);
    assert_eq!(m["total_cells"], 16);
    assert_eq!(m["summary"]["cells"], 16);
    assert_eq!(m["summary"]["agree"], 16, "{}", text(&o));
    for mode in ["trickle", "vanilla"] {
        let c = cell(&m, &format!("eim-eif|eim-eif|{mode}|none|icepeer/icepeer"));
        assert_eq!(c["connected"], true, "{c}");
        assert_eq!(c["path"], "srflx", "{c}");
        assert!(c["time_to_connected_ms"].as_f64().unwrap() > 0.0);
        assert!(c["checks_sent"].as_u64().unwrap() >= 2);
        let c = cell(
            &m,
            &format!("eim-eif|apdm-apdf|{mode}|none|icepeer/icepeer"),
        );
        assert_eq!(c["path"], "prflx", "{c}");
        let c = cell(
            &m,
            &format!("apdm-apdf|apdm-apdf|{mode}|none|icepeer/icepeer"),
        );
        assert_eq!(c["connected"], false, "{c}");
        assert_eq!(c["expected"]["connects"], false);
        let c = cell(
            &m,
            &format!("apdm-apdf|apdm-apdf|{mode}|udp|icepeer/icepeer"),
        );
        assert_eq!(c["path"], "relay", "{c}");
        // One side's local candidate is its relayed one.
        assert!(
            c["row_side"]["local_type"] == "relay" || c["column_side"]["local_type"] == "relay",
            "{c}"
        );
    }
    // Each cell connected in both modes carries vanilla's time minus trickle's (a figure, not
    // asserted: on a loaded machine either may win).
    let t = cell(&m, "eim-eif|eim-eif|trickle|none|icepeer/icepeer");
    let v = cell(&m, "eim-eif|eim-eif|vanilla|none|icepeer/icepeer");
    let diff =
        v["time_to_connected_ms"].as_f64().unwrap() - t["time_to_connected_ms"].as_f64().unwrap();
    for c in [t, v] {
        let saving = c["trickle_saving_ms"].as_f64().unwrap();
        assert!((saving - diff).abs() < 0.11, "{saving} vs {diff}: {c}");
    }
    let html = std::fs::read_to_string(reports.join("small/matrix.html")).unwrap();
    assert!(html.contains("apdm-apdf") && !html.contains("https://"));
    let md = std::fs::read_to_string(reports.join("small/matrix.md")).unwrap();
    assert!(md.contains("eim-eif"), "{md}");

    // The same matrix in two shards, merged: the same cells with the same outcomes.
    let mut parts = Vec::new();
    for i in 1..=2 {
        let part = dir.join(format!("part{i}.json"));
        let o = sim()
            .arg("matrix")
            .arg(&file)
            .arg("--shard")
            .arg(format!("{i}/2"))
            .arg("--out")
            .arg(&part)
            .arg("--quiet")
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", text(&o));
        assert_eq!(read(&part)["cells"].as_array().unwrap().len(), 8);
        parts.push(part);
    }
    let merged = dir.join("merged");
    let o = sim()
        .arg("merge")
        .arg(&merged)
        .args(&parts)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let j = read(&merged.join("matrix.json"));
    assert_eq!(j["shard"], Value::Null);
    let outcome = |m: &Value| {
        m["cells"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| (c["id"].clone(), c["connected"].clone(), c["path"].clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(outcome(&j), outcome(&m));
    // A merge of one shard alone is refused.
    let o = sim()
        .arg("merge")
        .arg(dir.join("half"))
        .arg(&parts[0])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));

    // Compared with itself: no regression. Against a baseline where a failing cell
    // connected directly: a regression, exit 1.
    let fresh = reports.join("small/matrix.json");
    let o = sim()
        .arg("compare")
        .arg(&fresh)
        .arg(&fresh)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let mut base = m.clone();
    for c in base["cells"].as_array_mut().unwrap() {
        if c["id"] == "apdm-apdf|apdm-apdf|trickle|udp|icepeer/icepeer" {
            c["path"] = "srflx".into();
        }
    }
    let base_file = dir.join("baseline.json");
    std::fs::write(&base_file, serde_json::to_string(&base).unwrap()).unwrap();
    let o = sim()
        .arg("compare")
        .arg(&base_file)
        .arg(&fresh)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("apdm-apdf|apdm-apdf|trickle|udp"),
        "{}",
        text(&o)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn aioice_answers_our_agent_in_a_cell() {
    require_root();
    let dir = tempdir("matrix-aioice");
    let file = dir.join("ai.toml");
    std::fs::write(
        &file,
        "name = \"ai\"\n[matrix]\nrows = [\"eim-eif\"]\ncolumns = [\"apdm-apdf\"]\n\
         modes = [\"vanilla\"]\nturn = [\"none\"]\npeers = [\"icepeer/aioice\"]\n",
    )
    .unwrap();
    let out = dir.join("ai.json");
    let o = sim()
        .arg("matrix")
        .arg(&file)
        .arg("--out")
        .arg(&out)
        .arg("--shard")
        .arg("1/1")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let m = read(&out);
    let c = &m["cells"][0];
    assert_eq!(c["column_side"]["agent"], "aioice", "{c}");
    assert_eq!(c["connected"], true, "{c}");
    assert_eq!(c["path"], "prflx", "{c}");
    assert_eq!(c["agrees"], true, "{c}");
    assert!(
        c["column_side"]["checks_sent"].as_u64().unwrap() >= 1,
        "{c}"
    );
}

#[test]
fn a_bad_matrix_file_names_the_line_and_sigterm_cleans_up() {
    let dir = tempdir("matrix-bad");
    let bad = dir.join("bad.toml");
    std::fs::write(&bad, "[matrix]\nrows = [\"eim-eif\",\n  \"no-such\"]\n").unwrap();
    let o = sim().arg("matrix").arg(&bad).output().unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("bad.toml:3: unknown profile"),
        "{}",
        text(&o)
    );
    let o = sim()
        .args([
            "matrix",
            "scenarios/matrices/nine_by_nine.toml",
            "--shard",
            "3/2",
        ])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));

    require_root();
    let mut child = sim()
        .args([
            "matrix",
            "scenarios/matrices/nine_by_nine.toml",
            "--quiet",
            "--reports",
        ])
        .arg(dir.join("reports"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    let t0 = Instant::now();
    while sim_namespaces_of(pid).is_empty() {
        assert!(t0.elapsed() < Duration::from_secs(20), "no cell started");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(500));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "sim did not exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(130));
    assert_eq!(sim_namespaces_of(pid), Vec::<String>::new());
    let leftovers = Command::new("pgrep")
        .args(["-f", &format!("natscope-matrix-{pid}-")])
        .output()
        .unwrap();
    assert!(
        leftovers.stdout.is_empty(),
        "agents left running: {}",
        String::from_utf8_lossy(&leftovers.stdout)
    );
    assert!(
        !std::env::temp_dir()
            .join(format!("natscope-matrix-{pid}-0"))
            .exists()
    );
}
