//! The `--attn` list of `bench`, `profile` and `compare`: unit names, comma-separated, or `all`.

use ppcr::attention::AttentionKind;

/// Parse `--attn`: `all` (every unit, `none` included), or names separated by commas. A name
/// given twice is refused, so a comparison never trains or times the same unit twice.
pub fn parse_units(list: &str) -> anyhow::Result<Vec<AttentionKind>> {
    if list.trim().eq_ignore_ascii_case("all") {
        return Ok(AttentionKind::ALL.to_vec());
    }
    let mut units = Vec::new();
    for name in list.split(',') {
        let unit = name.parse::<AttentionKind>()?;
        if units.contains(&unit) {
            anyhow::bail!("--attn {list}: unit '{}' is listed twice", unit.name());
        }
        units.push(unit);
    }
    Ok(units)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_lists_every_unit_and_names_parse_in_order() {
        assert_eq!(parse_units("all").unwrap(), AttentionKind::ALL.to_vec());
        assert_eq!(
            parse_units("ppcr,none").unwrap(),
            vec![AttentionKind::Ppcr, AttentionKind::None]
        );
    }

    #[test]
    fn duplicates_and_unknown_names_are_refused() {
        let twice = parse_units("none,se,none").unwrap_err().to_string();
        assert!(twice.contains("'none' is listed twice"), "{twice}");
        let unknown = parse_units("se,nope").unwrap_err().to_string();
        assert!(
            unknown.contains("unknown attention unit 'nope'"),
            "{unknown}"
        );
    }
}
