//! `--format` for `inspect` and `images`: docker's Go-template forms that
//! pipelines use — text with `{{.Field.Path}}` and `{{json .Field.Path}}`
//! — evaluated over a JSON value. Anything else in a template is refused as
//! unsupported, never ignored.

use serde_json::Value;

/// Render `template` over `root`. Values print as Go's text/template
/// prints them: strings raw, lists `[a b]`, maps `map[k:v]` (keys sorted).
pub fn render(template: &str, root: &Value) -> anyhow::Result<String> {
    let mut out = String::new();
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&unescape(&rest[..start]));
        let after = &rest[start + 2..];
        let end = after
            .find("}}")
            .ok_or_else(|| anyhow::anyhow!("template {template:?}: unclosed {{{{"))?;
        let action = after[..end]
            .trim()
            .trim_start_matches('-')
            .trim_end_matches('-');
        out.push_str(&action_value(action.trim(), root, template)?);
        rest = &after[end + 2..];
    }
    out.push_str(&unescape(rest));
    Ok(out)
}

/// docker's CLI turns `\t` and `\n` typed in a --format into real ones.
fn unescape(s: &str) -> String {
    s.replace("\\t", "\t").replace("\\n", "\n")
}

fn action_value(action: &str, root: &Value, template: &str) -> anyhow::Result<String> {
    let unsupported = || {
        anyhow::anyhow!(
            "template {template:?}: {{{{{action}}}}} is not supported\n\
             hint: rbuild's --format takes {{{{.Field.Path}}}} and {{{{json .Field.Path}}}} (or json)"
        )
    };
    let (json, path) = match action.split_once(char::is_whitespace) {
        Some(("json", p)) => (true, p.trim()),
        Some(_) => return Err(unsupported()),
        None => (false, action),
    };
    if !path.starts_with('.') || path.contains(char::is_whitespace) {
        return Err(unsupported());
    }
    let mut v = root;
    for field in path.split('.').skip(1).filter(|f| !f.is_empty()) {
        v = v.get(field).ok_or_else(|| {
            anyhow::anyhow!("template {template:?}: there is no field {field:?} in {path}")
        })?;
    }
    Ok(if json {
        serde_json::to_string(v)?
    } else {
        go_print(v)
    })
}

fn go_print(v: &Value) -> String {
    match v {
        Value::Null => "<no value>".to_string(),
        Value::String(s) => s.clone(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::Array(a) => {
            let items: Vec<String> = a.iter().map(go_print).collect();
            format!("[{}]", items.join(" "))
        }
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            let items: Vec<String> = keys
                .iter()
                .map(|k| format!("{k}:{}", go_print(&m[*k])))
                .collect();
            format!("map[{}]", items.join(" "))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn go_template_paths() {
        let v = json!({"Id": "sha256:ab", "Config": {"Env": ["A=1", "B=2"], "Labels": {"z": "1", "a": "2"}}});
        assert_eq!(render("{{.Id}}", &v).unwrap(), "sha256:ab");
        assert_eq!(render("{{ .Config.Env }}", &v).unwrap(), "[A=1 B=2]");
        assert_eq!(render("{{.Config.Labels}}", &v).unwrap(), "map[a:2 z:1]");
        assert_eq!(
            render("id={{json .Config.Env}}\\t!", &v).unwrap(),
            "id=[\"A=1\",\"B=2\"]\t!"
        );
        for bad in [
            "{{range .Config.Env}}x{{end}}",
            "{{.Id | printf}}",
            "{{index .Config 1}}",
        ] {
            assert!(
                render(bad, &v)
                    .unwrap_err()
                    .to_string()
                    .contains("not supported"),
                "{bad}"
            );
        }
        assert!(render("{{.Nope}}", &v)
            .unwrap_err()
            .to_string()
            .contains("no field"));
        assert!(render("{{.Id", &v).is_err());
    }
}
