//! In-place edits of configuration text that keep comments and layout, for
//! CLI commands such as `gateway users add-key`.

use toml_edit::{Array, DocumentMut, Item, TableLike, Value};

use crate::ssh::{check_authorized_key, key_identity};

/// Indentation of entries in an `authorized_keys` array this module creates.
const INDENT: &str = "    ";

/// Append an authorized key line to user `user` in a configuration document, preserving comments
/// and layout. Errors (as a String message) if the text is not TOML, no [[users]] entry has that name,
/// or the key line is already present (exact match after trim).
///
/// The key line is trimmed and given the same light check as at load (one
/// line, a key type then base64, no options), and "already present" also
/// covers the same key with another comment, since the loader refuses such
/// duplicates. The `authorized_keys` array is created when missing; in a
/// `[[users]]` table a new or multi-line array gets the new entry on its own
/// line. Only this one edit is made: the rest of the document is not validated.
pub fn add_authorized_key(config_text: &str, user: &str, key_line: &str) -> Result<String, String> {
    let key_line = key_line.trim();
    check_authorized_key(key_line).map_err(|why| format!("invalid authorized key line: {why}"))?;
    let mut doc: DocumentMut = config_text.parse().map_err(|err| format!("invalid TOML: {err}"))?;

    let mut matches = user_tables(&mut doc, user)?;
    let (table, inline) = match matches.len() {
        0 => return Err(format!("no [[users]] entry is named {user:?}")),
        1 => matches.pop().ok_or_else(|| "internal error: lost the user entry".to_owned())?,
        n => return Err(format!("{n} [[users]] entries are named {user:?}; fix the duplicate first")),
    };

    match table.get_mut("authorized_keys") {
        None => {
            table.insert("authorized_keys", Item::Value(Value::Array(new_array(key_line, inline))));
        }
        Some(existing) => {
            let Some(array) = existing.as_array_mut() else {
                return Err(format!("authorized_keys of user {user:?} is not an array; fix it first"));
            };
            let wanted = key_identity(key_line);
            if array.iter().filter_map(Value::as_str).any(|line| key_identity(line.trim()) == wanted) {
                return Err(format!("user {user:?} already has this key"));
            }
            push_line(array, key_line, inline);
        }
    }

    let out = doc.to_string();
    // Belt and braces: never hand back text that no longer parses.
    out.parse::<toml::Table>().map_err(|err| format!("internal error: edited document is not valid TOML: {err}"))?;
    Ok(out)
}

/// Every entry of the top-level `users` array named `user`, with whether it is
/// an inline table (`users = [{ ... }]`) rather than a `[[users]]` table.
fn user_tables<'d>(doc: &'d mut DocumentMut, user: &str) -> Result<Vec<(&'d mut dyn TableLike, bool)>, String> {
    let Some(users) = doc.get_mut("users") else {
        return Ok(Vec::new());
    };
    let named = |t: &dyn TableLike| t.get("name").and_then(Item::as_str) == Some(user);
    let mut out: Vec<(&'d mut dyn TableLike, bool)> = Vec::new();
    match users {
        Item::ArrayOfTables(tables) => {
            for table in tables.iter_mut() {
                if named(&*table) {
                    out.push((table, false));
                }
            }
        }
        Item::Value(Value::Array(values)) => {
            for value in values.iter_mut() {
                if let Some(table) = value.as_inline_table_mut() {
                    if named(&*table) {
                        out.push((table, true));
                    }
                }
            }
        }
        _ => return Err("users is neither [[users]] tables nor an array of inline tables".to_owned()),
    }
    Ok(out)
}

/// A fresh array holding `line`: one entry per line, except inside inline tables.
fn new_array(line: &str, inline: bool) -> Array {
    let mut array = Array::new();
    if inline {
        array.push(line);
    } else {
        let mut value = Value::from(line);
        value.decor_mut().set_prefix(format!("\n{INDENT}"));
        array.push_formatted(value);
        array.set_trailing_comma(true);
        array.set_trailing("\n");
    }
    array
}

/// Appends `line`, on its own line when the array is empty or already multi-line.
fn push_line(array: &mut Array, line: &str, inline: bool) {
    let prefix_of = |v: &Value| v.decor().prefix().and_then(|p| p.as_str()).unwrap_or_default().to_owned();
    let first_prefix = array.get(0).map(prefix_of);
    let multi_line = match &first_prefix {
        Some(prefix) => prefix.contains('\n'),
        None => !inline,
    };
    if !multi_line {
        array.push(line);
        return;
    }
    if array.is_empty() {
        *array = new_array(line, inline);
        return;
    }
    // Same indentation as the first entry.
    let indent = first_prefix.as_deref().and_then(|p| p.rsplit('\n').next()).unwrap_or(INDENT).to_owned();
    // Without a trailing comma, what follows the last entry (line break,
    // comment) is its suffix; move it after the comma about to be written.
    if !array.trailing_comma() {
        let moved = array.iter_mut().last().and_then(|last| {
            let suffix = last.decor().suffix().and_then(|s| s.as_str()).unwrap_or_default().to_owned();
            suffix.contains('\n').then(|| {
                last.decor_mut().set_suffix("");
                suffix
            })
        });
        if let Some(suffix) = moved {
            let trailing = format!("{suffix}{}", array.trailing().as_str().unwrap_or_default());
            array.set_trailing(trailing);
        }
    }
    // A comment after the last entry (now in the array's trailing text) stays
    // with that entry instead of drifting below the new one.
    let trailing = array.trailing().as_str().unwrap_or_default().to_owned();
    let (kept, rest) = match trailing.rfind('\n') {
        Some(end) if trailing.contains('#') => trailing.split_at(end + 1),
        _ => ("", trailing.as_str()),
    };
    let mut value = Value::from(line);
    if kept.is_empty() {
        value.decor_mut().set_prefix(format!("\n{indent}"));
    } else {
        value.decor_mut().set_prefix(format!("{kept}{indent}"));
        array.set_trailing(format!("\n{rest}"));
    }
    array.push_formatted(value);
    array.set_trailing_comma(true);
}
