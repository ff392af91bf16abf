//! Listing an overlay directory through a real mount: readdirplus answers every entry with
//! its attributes from one store call per batch, and imports only the directory listed.

mod common;

use common::*;
use cowstore::{InodeNo, OpenOptions, Store};
use std::fs;
use std::os::unix::fs::MetadataExt;

type TestResult = Result<(), Box<dyn std::error::Error>>;

#[test]
fn listing_an_overlay_directory_imports_none_of_its_subdirectories() -> TestResult {
    // Regression (issue 11): readdirplus answered each entry with a getattr, and getattr
    // imports a pending lower directory, so `ls -l` of a directory listed and imported every
    // subdirectory below it as well (a lower directory read and a store call per entry).
    let mut m = Mount::unmounted(None)?;
    let lower = m.dir.path().join("lower");
    for d in ["top/one/a", "top/one/b", "top/two/c"] {
        fs::create_dir_all(lower.join(d))?;
    }
    fs::write(lower.join("top/file"), b"lower bytes")?;
    let lower_arg = lower.to_str().ok_or("non-utf8 path")?;
    m.mount_with(&["--lower", lower_arg], &[])?;
    // What `ls -l top` does: getdents (the kernel's first READDIR of a stream is a
    // READDIRPLUS), then lstat of each entry, answered from the attributes it brought.
    let mut listed: Vec<(String, u64, u64)> = Vec::new();
    for e in fs::read_dir(m.path("top"))? {
        let e = e?;
        let md = fs::symlink_metadata(e.path())?;
        listed.push((
            e.file_name().to_string_lossy().into_owned(),
            md.len(),
            md.nlink(),
        ));
    }
    listed.sort();
    let names: Vec<&str> = listed.iter().map(|(n, _, _)| n.as_str()).collect();
    assert_eq!(names, ["file", "one", "two"]);
    assert_eq!(listed[0].1, 11, "the lower file's size");
    // Their subdirectories are not counted until they are imported: link count 1, "not
    // counted", never 2, which would say "no subdirectories".
    assert_eq!((listed[1].2, listed[2].2), (1, 1), "{listed:?}");
    // A look inside imports a directory; stat then has its exact count.
    fs::read_dir(m.path("top/one"))?.count();
    assert_eq!(fs::symlink_metadata(m.path("top/one"))?.nlink(), 4);
    m.umount()?;
    // Looking at the store itself (lookup imports the parent, never the child): "two" is
    // still pending ("one" was looked into above).
    let opts = OpenOptions {
        read_only: true,
        ..OpenOptions::default()
    };
    let s = Store::open(&m.store, &opts)?;
    let top = s.lookup(InodeNo::ROOT, b"top")?;
    assert_eq!(top.nlink, 4, "top itself was imported by the listing");
    assert_eq!(s.lookup(top.ino, b"one")?.nlink, 4);
    let two = s.lookup(top.ino, b"two")?;
    assert_eq!(two.nlink, 1, "two was imported by listing its parent");
    Ok(())
}
