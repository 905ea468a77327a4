//! The matrix on a terminal: one grid per mode, TURN setting and agent pair.

use std::collections::HashMap;

use comfy_table::{Cell as TCell, Color, ContentArrangement, Table};

use super::model::{Cell, Matrix, PathKind};

/// Short text of a cell: `srflx 182`, `relay 240`, `-` (no connection), `ERR`; a `!` marks a
/// cell that disagrees with the oracle.
pub fn short(c: &Cell) -> String {
    let base = outcome(c);
    if c.agrees { base } else { format!("{base} !") }
}

/// `srflx 182` (path and milliseconds to connected), `-` (no connection) or `ERR`.
pub fn outcome(c: &Cell) -> String {
    if c.error.is_some() {
        "ERR".to_owned()
    } else if c.connected {
        format!(
            "{} {:.0}",
            c.path.map_or("?", PathKind::as_str),
            c.time_to_connected_ms.unwrap_or(0.0)
        )
    } else {
        "-".to_owned()
    }
}

fn colour(c: &Cell) -> Color {
    match (c.error.is_some(), c.connected, c.path) {
        (true, _, _) => Color::Magenta,
        (_, false, _) => Color::Red,
        (_, true, Some(PathKind::Relay)) => Color::Yellow,
        (_, true, _) => Color::Green,
    }
}

/// Grids, a summary line and the flagged cells.
pub fn render(m: &Matrix) -> String {
    let by_id: HashMap<&str, &Cell> = m.cells.iter().map(|c| (c.id.as_str(), c)).collect();
    let mut out = String::new();
    for peers in &m.peers {
        for turn in &m.turn {
            for mode in &m.modes {
                let id = |r: &str, c: &str| {
                    format!(
                        "{r}|{c}|{}|{}|{}",
                        mode.as_str(),
                        turn.as_str(),
                        peers.label()
                    )
                };
                let present = m.rows.iter().any(|r| {
                    m.columns
                        .iter()
                        .any(|c| by_id.contains_key(id(r, c).as_str()))
                });
                if !present {
                    continue;
                }
                out.push_str(&format!(
                    "\n{} ICE, TURN {}, {} (rows offer, columns answer; ms to connected)\n",
                    mode.as_str(),
                    turn.as_str(),
                    peers.label()
                ));
                let mut t = Table::new();
                t.set_content_arrangement(ContentArrangement::Disabled);
                let mut header = vec![TCell::new("")];
                header.extend(m.columns.iter().map(TCell::new));
                t.set_header(header);
                for r in &m.rows {
                    let mut row = vec![TCell::new(r)];
                    for c in &m.columns {
                        row.push(match by_id.get(id(r, c).as_str()) {
                            Some(cell) => TCell::new(short(cell)).fg(colour(cell)),
                            None => TCell::new(""),
                        });
                    }
                    t.add_row(row);
                }
                out.push_str(&t.to_string());
                out.push('\n');
            }
        }
    }
    let s = &m.summary;
    out.push_str(&format!(
        "\n{} cells: {} connected ({} direct, {} relayed), {} agree with the oracle, {} \
         flagged, {} errors; {:.1} s, {:.0} cells/min, {} in parallel\n",
        s.cells,
        s.connected,
        s.direct,
        s.relayed,
        s.agree,
        s.flagged,
        s.errors,
        m.elapsed_ms as f64 / 1000.0,
        m.cells_per_minute(),
        m.jobs
    ));
    for c in m.cells.iter().filter(|c| !c.agrees) {
        out.push_str(&format!(
            "  ! {}: {}\n",
            c.id,
            c.flag.as_deref().unwrap_or("disagrees with the oracle")
        ));
    }
    out
}
