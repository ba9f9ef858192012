//! kubeconfig files: one cluster (server URL and the CA file), one user, one context.

use std::path::Path;

/// How a kubeconfig's user authenticates.
pub enum User<'a> {
    /// A client certificate and its key, as files.
    ClientCert { cert: &'a Path, key: &'a Path },
    /// A bearer token (a ServiceAccount token).
    Token(&'a str),
}

/// The kubeconfig text. Paths must be absolute (kubectl resolves relative ones against the
/// kubeconfig's folder, kube-rs against the working directory).
pub fn render(server: &str, ca: &Path, user_name: &str, user: &User) -> String {
    let user = match user {
        User::ClientCert { cert, key } => format!(
            "    client-certificate: {}\n    client-key: {}\n",
            quote(&cert.to_string_lossy()),
            quote(&key.to_string_lossy())
        ),
        User::Token(token) => format!("    token: {}\n", quote(token)),
    };
    format!(
        "apiVersion: v1\n\
         kind: Config\n\
         clusters:\n\
         - name: enforcer\n  \
           cluster:\n    \
             server: {server}\n    \
             certificate-authority: {ca}\n\
         users:\n\
         - name: {name}\n  \
           user:\n{user}\
         contexts:\n\
         - name: {name}\n  \
           context:\n    \
             cluster: enforcer\n    \
             user: {name}\n\
         current-context: {name}\n",
        server = quote(server),
        ca = quote(&ca.to_string_lossy()),
        name = quote(user_name),
    )
}

/// A YAML double-quoted scalar (JSON's string syntax is valid YAML).
fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_kubeconfig() {
        let text = render(
            "https://10.0.0.1:6443",
            Path::new("/tmp/x/ca.crt"),
            "enforcer-system/enforcer",
            &User::Token("ey.J\"x"),
        );
        assert_eq!(
            text,
            "apiVersion: v1\nkind: Config\nclusters:\n- name: enforcer\n  cluster:\n    \
             server: \"https://10.0.0.1:6443\"\n    certificate-authority: \"/tmp/x/ca.crt\"\n\
             users:\n- name: \"enforcer-system/enforcer\"\n  user:\n    token: \"ey.J\\\"x\"\n\
             contexts:\n- name: \"enforcer-system/enforcer\"\n  context:\n    cluster: enforcer\n    \
             user: \"enforcer-system/enforcer\"\ncurrent-context: \"enforcer-system/enforcer\"\n"
        );
    }

    #[test]
    fn a_client_certificate_kubeconfig() {
        let text = render(
            "https://[fd00::1]:6443",
            Path::new("/d/ca.crt"),
            "admin",
            &User::ClientCert {
                cert: Path::new("/d/admin.crt"),
                key: Path::new("/d/admin.key"),
            },
        );
        assert!(
            text.contains(
                "    client-certificate: \"/d/admin.crt\"\n    client-key: \"/d/admin.key\"\n"
            ),
            "{text}"
        );
        assert!(
            text.contains("server: \"https://[fd00::1]:6443\""),
            "{text}"
        );
    }
}
