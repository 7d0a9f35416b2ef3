//! Flow collections (`[`, `{`) nested too deep are found before the YAML parser sees them: libyaml
//! rechecks every open level for each token, so its time grows with the square of the depth
//! (100,000 `[` took 35 s here), and serde gives up at 128 levels anyway. This scanner follows
//! the parts of libyaml's tokenizer that decide where a bracket is a bracket: quoted scalars,
//! comments, plain scalars (which end at flow indicators only inside flow collections) and
//! block scalars.

/// serde_yaml_ng's recursion limit: a document nested deeper never loads.
pub(crate) const MAX_FLOW_DEPTH: usize = 128;

/// The byte offset of the first bracket that opens a flow collection deeper than
/// [`MAX_FLOW_DEPTH`], if there is one.
pub(crate) fn too_deep(text: &str) -> Option<usize> {
    let b = text.as_bytes();
    let ws = |i: usize| i >= b.len() || matches!(b[i], b' ' | b'\t' | b'\r' | b'\n');
    let mut depth = 0usize;
    // A node may begin here (after indentation, `- `, `: `, `,`, an opening bracket).
    let mut token_start = true;
    let mut plain = false;
    // Column of the block collection this line is in (`-1` at the top): plain scalars continue
    // on lines indented past it, block scalars' content must be.
    let mut owner: isize = -1;
    // Column where the last scalar began (a key once a `:` follows).
    let mut scalar_col: isize = -1;
    let mut block_scalar: Option<BlockScalar> = None;
    let mut i = 0;
    while i < b.len() {
        // A line: indentation first.
        let line = i;
        while i < b.len() && b[i] == b' ' {
            i += 1;
        }
        let indent = (i - line) as isize;
        let blank = ws(i);
        let marker =
            indent == 0 && (b[i..].starts_with(b"---") || b[i..].starts_with(b"...")) && ws(i + 3);
        if let Some(scalar) = &mut block_scalar {
            let content = !marker
                && match scalar.indent {
                    Some(n) => blank || indent >= n,
                    None => blank || indent > scalar.parent,
                };
            if content {
                if !blank && scalar.indent.is_none() {
                    scalar.indent = Some(indent);
                }
                i = end_of_line(b, i) + 1;
                continue;
            }
            block_scalar = None;
        }
        if marker {
            // A document marker: libyaml ends (or fails) every open collection here.
            depth = 0;
            plain = false;
            token_start = true;
            owner = -1;
            i += 3;
        } else if depth == 0 && !blank && !(plain && indent > owner) {
            plain = false;
            token_start = true;
            owner = indent;
        }
        // The rest of the line.
        while i < b.len() && b[i] != b'\n' {
            let c = b[i];
            let col = (i - line) as isize;
            let after_space = i == 0 || matches!(b[i - 1], b' ' | b'\t');
            match c {
                b'#' if after_space => {
                    plain = false;
                    i = end_of_line(b, i);
                    continue;
                }
                b' ' | b'\t' | b'\r' => {}
                b'[' | b'{' if depth > 0 || (token_start && !plain) => {
                    depth += 1;
                    if depth > MAX_FLOW_DEPTH {
                        return Some(i);
                    }
                    plain = false;
                    token_start = true;
                }
                b']' | b'}' if depth > 0 => {
                    depth -= 1;
                    plain = false;
                    token_start = false;
                }
                b',' if depth > 0 => {
                    plain = false;
                    token_start = true;
                }
                b':' if !plain || ws(i + 1) || (depth > 0 && is_flow_indicator(b, i + 1)) => {
                    if depth == 0 && scalar_col >= 0 {
                        owner = scalar_col;
                    }
                    plain = false;
                    token_start = true;
                }
                b'-' | b'?' if token_start && !plain && ws(i + 1) => {
                    if depth == 0 {
                        owner = col;
                    }
                }
                b'\'' | b'"' if token_start && !plain => {
                    scalar_col = col;
                    i = end_of_quoted(b, i);
                    token_start = false;
                    continue;
                }
                b'|' | b'>' if depth == 0 && token_start && !plain => {
                    let explicit = b[i + 1..]
                        .iter()
                        .take(2)
                        .find(|d| d.is_ascii_digit())
                        .map(|d| isize::from(d - b'0'));
                    block_scalar = Some(BlockScalar {
                        parent: owner,
                        indent: explicit.map(|n| owner.max(0) + n),
                    });
                    i = end_of_line(b, i);
                    continue;
                }
                _ => {
                    if token_start && !plain {
                        plain = true;
                        token_start = false;
                        scalar_col = col;
                    }
                }
            }
            i += 1;
        }
        i += 1;
    }
    None
}

struct BlockScalar {
    /// Content lines are indented past this column ...
    parent: isize,
    /// ... by the first content line's indentation (or an explicit indicator).
    indent: Option<isize>,
}

fn is_flow_indicator(b: &[u8], i: usize) -> bool {
    i < b.len() && matches!(b[i], b',' | b'[' | b']' | b'{' | b'}')
}

fn end_of_line(b: &[u8], i: usize) -> usize {
    b[i..]
        .iter()
        .position(|c| *c == b'\n')
        .map_or(b.len(), |n| i + n)
}

/// The offset after the quoted scalar opening at `i` (`''` is a quote in single quotes, `\`
/// escapes in double quotes); the end of the text if it never closes.
fn end_of_quoted(b: &[u8], i: usize) -> usize {
    let quote = b[i];
    let mut j = i + 1;
    while j < b.len() {
        match b[j] {
            b'\\' if quote == b'"' => j += 2,
            c if c == quote => {
                if quote == b'\'' && b.get(j + 1) == Some(&b'\'') {
                    j += 2;
                } else {
                    return j + 1;
                }
            }
            _ => j += 1,
        }
    }
    b.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nested(open: &str, close: &str, n: usize) -> String {
        format!("{}1{}", open.repeat(n), close.repeat(n))
    }

    #[test]
    fn flow_depth_is_counted_where_yaml_has_brackets() {
        let deep = MAX_FLOW_DEPTH + 1;
        for (text, too) in [
            (format!("a: {}\n", nested("[", "]", MAX_FLOW_DEPTH)), false),
            (format!("a: {}\n", nested("[", "]", deep)), true),
            (format!("a: {}\n", nested("{b: ", "}", deep)), true),
            (format!("- {}\n", nested("[", "]", deep)), true),
            (nested("[", "]", deep), true),
            // Not brackets: in quotes, comments, block scalars, inside plain scalars.
            (format!("a: '{}'\n", "[".repeat(deep)), false),
            (format!("a: \"\\\"{}\"\n", "[".repeat(deep)), false),
            (format!("a: 'it''s {}'\n", "{".repeat(deep)), false),
            (format!("a: 1 # {}\n", "[".repeat(deep)), false),
            (format!("a: |\n  {}\n  x\nb: 1\n", "[".repeat(deep)), false),
            (format!("a: b{}\n", "[".repeat(deep)), false),
            (format!("a: it's\n  {}\n", "[".repeat(deep)), false),
            // JSON: a quoted key, ':' without a space, the last-applied annotation's braces.
            (
                format!("{{\"a\":\"{}\",\"b\":[1]}}", "{".repeat(deep)),
                false,
            ),
            // Brackets after the block scalar ends, and after a quote in a plain scalar.
            (format!("a: |\n  x\nb: {}\n", nested("[", "]", deep)), true),
            (format!("a: x'y\nb: {}\n", nested("[", "]", deep)), true),
            (format!("a: [x'y, {}]\n", nested("[", "]", deep)), true),
            // Each document starts again.
            (
                format!(
                    "a: {}\n---\nb: {}\n",
                    nested("[", "]", 100),
                    nested("[", "]", 100)
                ),
                false,
            ),
        ] {
            assert_eq!(too_deep(&text).is_some(), too, "{text}");
        }
    }
}
