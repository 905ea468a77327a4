//! Connectivity matrices: ICE sessions between peers behind NAT profiles, cell by cell.

pub mod model;
pub mod spec;
pub mod run;
pub mod term;

/// Write `matrix.json` (and, once the report module lands, the Markdown and HTML views).
pub fn write(dir: &std::path::Path, m: &model::Matrix) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let json = serde_json::to_string_pretty(m).map_err(std::io::Error::other)?;
    std::fs::write(dir.join("matrix.json"), json)
}
