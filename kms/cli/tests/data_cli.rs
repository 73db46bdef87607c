//! `kmsctl data … --out` against a real `kmsd`: an existing file is replaced by a complete new
//! one (a plaintext with mode 0600, whatever the old file's mode; the old file is never written
//! into, and no temporary file is left), `--out -` and `--out /dev/stdout` write the raw bytes to
//! stdout (the line saying so to stderr), and `--out -` with `--output json` is a usage error.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Read as _;
use std::path::Path;

use kms_testkit::*;

const KMSCTL: &str = env!("CARGO_BIN_EXE_kmsctl");
const APP: &str = "spiffe://test/data-cli";

/// `cmd` with the settings of the data-plane caller APP, in `dir`.
fn as_app(c: &Ceremony, dir: &Path, mut cmd: tokio::process::Command) -> tokio::process::Command {
    let (cert, key) = c.pki.client_files(APP, "data-cli");
    cmd.current_dir(dir)
        .env("KMSCTL_SERVER", format!("https://{}", c.server.addr))
        .env("KMSCTL_TLS_SERVER_NAME", "localhost")
        .env("KMSCTL_CA", c.pki.ca_path())
        .env("KMSCTL_CERT", cert)
        .env("KMSCTL_CLIENT_KEY", key)
        // The test kmsd has no hardware evidence: answers are checked under the key it presents.
        .env("KMSCTL_DANGER_UNATTESTED_KMSD", "1");
    cmd
}

/// Runs kmsctl as the data-plane caller APP, in `dir`; returns its raw stdout too.
async fn kmsctl(c: &Ceremony, dir: &Path, args: &[&str]) -> (Out, Vec<u8>) {
    let out = as_app(c, dir, kmsctl_command(KMSCTL))
        .arg("data")
        .args(args)
        .output()
        .await
        .unwrap();
    let raw = out.stdout.clone();
    (out.into(), raw)
}

/// Runs `script` in `sh` as APP, in `dir`, with `kmsctl` on the PATH: a pipeline exactly as
/// docs/operations.md shows it.
async fn shell(c: &Ceremony, dir: &Path, script: &str) -> Out {
    let bin = Path::new(KMSCTL).parent().unwrap();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
    let mut sh = tokio::process::Command::new("sh");
    sh.stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    for var in KMSCTL_VARS {
        sh.env_remove(var);
    }
    let out = as_app(c, dir, sh)
        .env("PATH", path)
        .args(["-c", script])
        .output()
        .await
        .unwrap();
    out.into()
}

/// docs/operations.md, "Data-plane calls": `kmsctl data generate KEY > blob.b64` writes the blob
/// alone, which `kmsctl data decrypt --in blob.b64` takes back; `--out FILE` writes it raw.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_blobs_redirected_to_a_file_decrypt() {
    let Some(c) = Ceremony::new(Backend::Sqlite, Options::default()).await else {
        return;
    };
    c.create_key("orders", &[APP], UNATTESTED).await;
    let dir = tempfile::tempdir().unwrap();

    shell(
        &c,
        dir.path(),
        "kmsctl data generate orders --context tenant=42 > blob.b64",
    )
    .await
    .expect(0);
    let text = std::fs::read_to_string(dir.path().join("blob.b64")).unwrap();
    assert_eq!(text.lines().count(), 1, "one line, the blob alone: {text:?}");
    let (out, key) = kmsctl(
        &c,
        dir.path(),
        &[
            "decrypt",
            "--in",
            "blob.b64",
            "--context",
            "tenant=42",
            "--expect-key",
            "orders",
            "--out",
            "-",
        ],
    )
    .await;
    out.expect(0);
    assert_eq!(key.len(), 32, "the 32-byte data key");
    // The same data key only under the same context.
    let (out, _) = kmsctl(
        &c,
        dir.path(),
        &["decrypt", "--in", "blob.b64", "--context", "tenant=43"],
    )
    .await;
    assert!(out.expect(1).stderr.contains("decrypt_failed"));

    // --out writes the raw blob, as encrypt's does; JSON still has the key and the blob.
    let (out, _) = kmsctl(&c, dir.path(), &["generate", "orders", "--out", "blob.bin"]).await;
    assert!(out.expect(0).stdout.starts_with("wrote the "));
    assert!(std::fs::read(dir.path().join("blob.bin"))
        .unwrap()
        .starts_with(kms_core::blob::MAGIC));
    let (out, raw) = kmsctl(&c, dir.path(), &["decrypt", "--in", "blob.bin", "--out", "-"]).await;
    out.expect(0);
    assert_eq!(raw.len(), 32);
    let (out, _) = kmsctl(&c, dir.path(), &["--output", "json", "generate", "orders"]).await;
    let doc = out.expect(0).json();
    assert_eq!(doc["key_version"], 1, "{doc}");
    assert!(doc["key_id"].as_str().unwrap().starts_with("k-"), "{doc}");
    assert!(doc["ciphertext_blob"].is_string(), "{doc}");
    // The blob alone goes to --out; the plaintext key only with labelled lines (no --out).
    let (out, _) = kmsctl(
        &c,
        dir.path(),
        &["generate", "orders", "--with-plaintext", "--out", "x"],
    )
    .await;
    out.expect(2);
}

#[cfg(unix)]
fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[cfg(unix)]
fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_replaces_files_with_their_final_mode_and_writes_stdout() {
    let Some(c) = Ceremony::new(Backend::Sqlite, Options::default()).await else {
        return;
    };
    c.create_key("files", &[APP], UNATTESTED).await;
    let dir = tempfile::tempdir().unwrap();
    let blob = dir.path().join("msg.blob");
    let plain = dir.path().join("plain.txt");

    // A blob over an existing file that everyone may write: a new file, 0644 at the most.
    std::fs::write(&blob, b"an old blob, longer than nothing").unwrap();
    #[cfg(unix)]
    set_mode(&blob, 0o666);
    let (out, _) = kmsctl(
        &c,
        dir.path(),
        &["encrypt", "files", "--text", "hello", "--out", "msg.blob"],
    )
    .await;
    let out = out.expect(0);
    assert!(out.stdout.starts_with("wrote the "), "{}", out.stdout);
    assert!(std::fs::read(&blob).unwrap().starts_with(kms_core::blob::MAGIC));
    #[cfg(unix)]
    assert_eq!(mode(&blob) & 0o133, 0, "at most 0644, not the old 0666");

    // A plaintext over an existing 0644 file: replaced by a 0600 one. The old file is not
    // written into (a reader that has it open still reads the old contents).
    std::fs::write(&plain, b"the old contents, longer than hello").unwrap();
    #[cfg(unix)]
    set_mode(&plain, 0o644);
    let mut held = std::fs::File::open(&plain).unwrap();
    let (out, _) = kmsctl(
        &c,
        dir.path(),
        &["--output", "json", "decrypt", "--in", "msg.blob", "--out", "plain.txt"],
    )
    .await;
    let doc = out.expect(0).json();
    assert_eq!(doc["bytes"], 5, "{doc}");
    assert_eq!(std::fs::read(&plain).unwrap(), b"hello", "no tail of the old file");
    #[cfg(unix)]
    assert_eq!(mode(&plain), 0o600, "the replaced plaintext file is private");
    let mut old = String::new();
    held.read_to_string(&mut old).unwrap();
    assert_eq!(old, "the old contents, longer than hello");
    assert_eq!(
        names(dir.path()),
        ["msg.blob", "plain.txt"],
        "no temporary file is left"
    );

    // Human output says where it went, and its mode.
    let (out, _) = kmsctl(&c, dir.path(), &["decrypt", "--in", "msg.blob", "--out", "plain.txt"]).await;
    let out = out.expect(0);
    assert_eq!(
        out.stdout.trim_end(),
        "wrote 5 bytes of plaintext to plain.txt (mode 0600)",
        "{}",
        out.stdout
    );

    // To stdout: only the raw bytes there, the line saying so on stderr.
    for to in ["-", "/dev/stdout"] {
        let (out, raw) = kmsctl(&c, dir.path(), &["decrypt", "--in", "msg.blob", "--out", to]).await;
        let out = out.expect(0);
        assert_eq!(raw, b"hello", "--out {to}: {}", out.stderr);
        assert!(
            out.stderr.contains("wrote 5 bytes of plaintext to stdout"),
            "--out {to}: {}",
            out.stderr
        );
    }
    let (out, raw) = kmsctl(&c, dir.path(), &["encrypt", "files", "--text", "hello", "--out", "-"]).await;
    out.expect(0);
    assert!(raw.starts_with(kms_core::blob::MAGIC), "a raw blob on stdout");
    assert_eq!(names(dir.path()), ["msg.blob", "plain.txt"], "no file named -");

    // stdout carries the JSON document with --output json: raw bytes there are refused first.
    let (out, _) = kmsctl(
        &c,
        dir.path(),
        &["--output", "json", "decrypt", "--in", "msg.blob", "--out", "-"],
    )
    .await;
    let doc = out.expect(2).json();
    assert_eq!(doc["error"]["kind"], "usage", "{doc}");

    // A context kmsd would refuse is refused as kmsd refuses it, before the plaintext is sealed
    // or anything is sent.
    let long = format!("k={}", "v".repeat(5000));
    let (out, _) = kmsctl(
        &c,
        dir.path(),
        &[
            "--output",
            "json",
            "encrypt",
            "files",
            "--context",
            &long,
            "--text",
            "hi",
        ],
    )
    .await;
    let doc = out.expect(1).json();
    assert_eq!(doc["error"]["reason"], "invalid_context", "{doc}");
    assert_eq!(doc["error"]["code"], "INVALID_ARGUMENT", "{doc}");

    // Re-encrypting a blob over itself: read first, then replaced whole.
    let (out, _) = kmsctl(&c, dir.path(), &["re-encrypt", "--in", "msg.blob", "--out", "msg.blob"]).await;
    out.expect(0);
    let (out, raw) = kmsctl(&c, dir.path(), &["decrypt", "--in", "msg.blob", "--out", "-"]).await;
    out.expect(0);
    assert_eq!(raw, b"hello");

    // Not over a directory, nor through a link; both exit 4 and name the path.
    std::fs::create_dir(dir.path().join("sub")).unwrap();
    let (out, _) = kmsctl(&c, dir.path(), &["decrypt", "--in", "msg.blob", "--out", "sub"]).await;
    let out = out.expect(4);
    assert!(
        out.stderr.contains("sub exists and is not a regular file"),
        "{}",
        out.stderr
    );
    #[cfg(unix)]
    {
        std::os::unix::fs::symlink(&plain, dir.path().join("link")).unwrap();
        let (out, _) = kmsctl(&c, dir.path(), &["decrypt", "--in", "msg.blob", "--out", "link"]).await;
        let out = out.expect(4);
        assert!(out.stderr.contains("link is a symbolic link"), "{}", out.stderr);
    }
}
