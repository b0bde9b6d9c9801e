//! Certificates made with the `openssl` command: a CA with a server and a client certificate
//! for loopback (etcd over TLS, test webhooks), and a cluster's PKI for kube-apiserver.

use std::path::PathBuf;
use std::process::Command;

/// Certificates of a TLS etcd: a CA, the server's (for 127.0.0.1) and a client's.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

/// Runs the `openssl` command in `dir`; panics with its error output if it fails.
pub(crate) fn openssl(dir: &std::path::Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run openssl (apt-get install -y openssl)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Makes a CA, a server certificate for 127.0.0.1 (and `localhost`) and a client certificate in
/// `dir` with the `openssl` command, valid for two days; panics if openssl fails.
pub fn make_certs(dir: &std::path::Path) -> TlsFiles {
    let f = |name: &str| dir.join(name);
    let openssl = |args: &[&str]| openssl(dir, args);
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    openssl(
        &[
            &["req", "-x509"],
            &ec[..],
            &[
                "-keyout",
                "ca-key.pem",
                "-out",
                "ca.pem",
                "-days",
                "2",
                "-subj",
                "/CN=svcplane-test-ca",
            ],
        ]
        .concat(),
    );
    for (name, ext) in [
        (
            "server",
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\n",
        ),
        ("client", "extendedKeyUsage=clientAuth\n"),
    ] {
        std::fs::write(f(&format!("{name}.ext")), ext).unwrap();
        let (key, csr, cert, extfile) = (
            format!("{name}-key.pem"),
            format!("{name}.csr"),
            format!("{name}.pem"),
            format!("{name}.ext"),
        );
        openssl(
            &[
                &["req"],
                &ec[..],
                &[
                    "-keyout",
                    &key,
                    "-out",
                    &csr,
                    "-subj",
                    &format!("/CN=svcplane-test-{name}"),
                ],
            ]
            .concat(),
        );
        openssl(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca-key.pem",
            "-CAcreateserial",
            "-out",
            &cert,
            "-days",
            "2",
            "-extfile",
            &extfile,
        ]);
    }
    TlsFiles {
        ca: f("ca.pem"),
        server_cert: f("server.pem"),
        server_key: f("server-key.pem"),
        client_cert: f("client.pem"),
        client_key: f("client-key.pem"),
    }
}
