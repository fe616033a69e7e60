//! Name lists for `qname_file`: one name per line, read by the loader and
//! parsed here (no I/O in this crate).

use super::NameEntry;
use crate::dns::name_to_wire;

/// Largest `qname_file` read.
pub const MAX_NAME_FILE_BYTES: u64 = 64 << 20;
/// Most names one `qname_file` holds.
pub const MAX_NAME_FILE_ENTRIES: usize = 2_000_000;

/// The names of one file, in file order, duplicates removed.
pub type NameList = Vec<NameEntry>;

/// Parses a name file: a name per line (it and every name below it), or
/// `=name` (that name only); blank lines and `#` comments are skipped.
/// Errors name the line.
pub fn parse_name_file(text: &str) -> Result<NameList, String> {
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let (exact, name) = match line.strip_prefix('=') {
            Some(rest) => (true, rest.trim()),
            None => (false, line),
        };
        let wire = name_to_wire(name).map_err(|e| format!("line {}: {e}", i + 1))?;
        let entry = NameEntry { wire, exact };
        if seen.insert(entry.clone()) {
            if out.len() == MAX_NAME_FILE_ENTRIES {
                return Err(format!(
                    "more than {MAX_NAME_FILE_ENTRIES} names (line {})",
                    i + 1
                ));
            }
            out.push(entry);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name_files_parse_with_comments_exact_names_and_duplicates() {
        let list = parse_name_file(
            "# blocklist\nads.example.\n\n=Exact.Example  # only this one\nads.example\n",
        )
        .unwrap();
        assert_eq!(
            list,
            [
                NameEntry {
                    wire: b"\x03ads\x07example\0".to_vec(),
                    exact: false
                },
                NameEntry {
                    wire: b"\x05exact\x07example\0".to_vec(),
                    exact: true
                },
            ]
        );
        let e = parse_name_file("ok.\nbad..name\n").unwrap_err();
        assert!(e.starts_with("line 2:"), "{e}");
        assert!(parse_name_file("").unwrap().is_empty());
    }
}
