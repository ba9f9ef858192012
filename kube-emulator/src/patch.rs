//! Patches: JSON merge patch (RFC 7386, also used for strategic merge patches) and JSON patch
//! (RFC 6902).

use serde_json::Value;

/// Applies a JSON merge patch (RFC 7386) to `target`.
pub(crate) fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Default::default());
    }
    let Value::Object(t) = target else {
        unreachable!("made an object above")
    };
    for (k, v) in p {
        if v.is_null() {
            t.remove(k);
        } else {
            merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
        }
    }
}

fn unescape(token: &str) -> String {
    token.replace("~1", "/").replace("~0", "~")
}

/// Splits a JSON pointer into its unescaped tokens.
fn tokens(path: &str) -> Result<Vec<String>, String> {
    if path.is_empty() {
        return Ok(Vec::new());
    }
    let Some(rest) = path.strip_prefix('/') else {
        return Err(format!(
            "invalid JSON pointer {path:?}: must start with '/'"
        ));
    };
    Ok(rest.split('/').map(unescape).collect())
}

fn parent_mut<'a>(
    doc: &'a mut Value,
    toks: &[String],
    path: &str,
) -> Result<&'a mut Value, String> {
    let mut v = doc;
    for t in toks {
        v = match v {
            Value::Object(m) => m.get_mut(t),
            Value::Array(a) => t.parse::<usize>().ok().and_then(|i| a.get_mut(i)),
            _ => None,
        }
        .ok_or_else(|| format!("path {path:?} does not exist"))?;
    }
    Ok(v)
}

fn get<'a>(doc: &'a Value, path: &str) -> Result<&'a Value, String> {
    doc.pointer(path)
        .ok_or_else(|| format!("path {path:?} does not exist"))
}

fn add(doc: &mut Value, path: &str, value: Value) -> Result<(), String> {
    let toks = tokens(path)?;
    let Some((last, parents)) = toks.split_last() else {
        *doc = value;
        return Ok(());
    };
    match parent_mut(doc, parents, path)? {
        Value::Object(m) => {
            m.insert(last.clone(), value);
        }
        Value::Array(a) => {
            let i = if last == "-" {
                a.len()
            } else {
                last.parse::<usize>()
                    .ok()
                    .filter(|i| *i <= a.len())
                    .ok_or_else(|| format!("invalid array index in {path:?}"))?
            };
            a.insert(i, value);
        }
        _ => return Err(format!("cannot add at {path:?}: parent is not a container")),
    }
    Ok(())
}

fn remove(doc: &mut Value, path: &str) -> Result<Value, String> {
    let toks = tokens(path)?;
    let Some((last, parents)) = toks.split_last() else {
        return Err("cannot remove the whole document".into());
    };
    match parent_mut(doc, parents, path)? {
        Value::Object(m) => m
            .remove(last)
            .ok_or_else(|| format!("path {path:?} does not exist")),
        Value::Array(a) => {
            let i = last
                .parse::<usize>()
                .ok()
                .filter(|i| *i < a.len())
                .ok_or_else(|| format!("invalid array index in {path:?}"))?;
            Ok(a.remove(i))
        }
        _ => Err(format!("path {path:?} does not exist")),
    }
}

/// Applies a JSON patch (RFC 6902) to `doc`. On error `doc` may be partly patched: the caller
/// works on a copy.
pub(crate) fn json_patch(doc: &mut Value, patch: &Value) -> Result<(), String> {
    let ops = patch
        .as_array()
        .ok_or("a JSON patch must be an array of operations")?;
    for (n, op) in ops.iter().enumerate() {
        let name = op["op"]
            .as_str()
            .ok_or_else(|| format!("operation {n}: missing \"op\""))?;
        let path = op["path"]
            .as_str()
            .ok_or_else(|| format!("operation {n}: missing \"path\""))?;
        let value = || {
            op.get("value")
                .cloned()
                .ok_or_else(|| format!("operation {n} ({name}): missing \"value\""))
        };
        let from = || {
            op["from"]
                .as_str()
                .ok_or_else(|| format!("operation {n} ({name}): missing \"from\""))
        };
        match name {
            "add" => add(doc, path, value()?)?,
            "remove" => {
                remove(doc, path)?;
            }
            "replace" => {
                remove(doc, path)?;
                add(doc, path, value()?)?;
            }
            "move" => {
                let v = remove(doc, from()?)?;
                add(doc, path, v)?;
            }
            "copy" => {
                let v = get(doc, from()?)?.clone();
                add(doc, path, v)?;
            }
            "test" => {
                if *get(doc, path)? != value()? {
                    return Err(format!("test operation {n} failed at {path:?}"));
                }
            }
            other => return Err(format!("operation {n}: unknown op {other:?}")),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merge_patch_rfc7386() {
        let mut t = json!({"a": "b", "c": {"d": "e", "f": "g"}, "l": [1, 2]});
        merge_patch(
            &mut t,
            &json!({"a": "z", "c": {"f": null}, "l": [3], "n": {"x": 1}}),
        );
        assert_eq!(
            t,
            json!({"a": "z", "c": {"d": "e"}, "l": [3], "n": {"x": 1}})
        );
    }

    #[test]
    fn json_patch_rfc6902() {
        let mut t = json!({"metadata": {"labels": {"a": "1", "x/y": "2"}}, "l": [1, 2]});
        json_patch(
            &mut t,
            &json!([
                {"op": "add", "path": "/metadata/labels/b", "value": "3"},
                {"op": "remove", "path": "/metadata/labels/x~1y"},
                {"op": "replace", "path": "/l/0", "value": 9},
                {"op": "add", "path": "/l/-", "value": 4},
                {"op": "test", "path": "/metadata/labels/a", "value": "1"},
                {"op": "copy", "from": "/metadata/labels/a", "path": "/c"},
                {"op": "move", "from": "/c", "path": "/d"},
            ]),
        )
        .unwrap();
        assert_eq!(
            t,
            json!({"metadata": {"labels": {"a": "1", "b": "3"}}, "l": [9, 2, 4], "d": "1"})
        );
        let mut t = json!({"a": 1});
        assert!(json_patch(&mut t, &json!([{"op": "remove", "path": "/b"}])).is_err());
        assert!(json_patch(&mut t, &json!([{"op": "test", "path": "/a", "value": 2}])).is_err());
        assert!(json_patch(&mut t, &json!({"op": "add"})).is_err());
    }
}
