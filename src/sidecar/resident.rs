//! Keeping the sidecar's resident memory to what it uses when idle: it runs in every
//! application pod, so its idle RSS is paid once per pod (the target is under 8 MiB).
//!
//! Most of that RSS is not heap (under 1 MiB) but pages of code: the binary's own and the C
//! library's. Start-up runs code from all over them once (command line, kubeconfig, TLS setup,
//! the first list, logging), and the kernel maps 64 KiB around every page first touched
//! (fault-around), so after start-up most of the text is mapped (measured: 5.2 of 7.1 MiB of
//! the binary's text, 8.6 MiB RSS in all, before any client). Once the sidecar is ready,
//! [`release_startup_pages`] unmaps the file pages of mappings that were never written; what
//! the idle sidecar runs faults back in at once (minor faults: the pages stay in the page
//! cache), what only start-up ran stays out.

use std::fs;

/// `MADV_DONTNEED` on every read-only, file-backed mapping that holds no private (written)
/// page. Returns the bytes unmapped. Best effort: if `/proc/self/smaps` cannot be read,
/// nothing happens.
pub fn release_startup_pages() -> usize {
    let Ok(smaps) = fs::read_to_string("/proc/self/smaps") else {
        return 0;
    };
    let mut released = 0;
    for (start, end) in clean_file_mappings(&smaps) {
        // SAFETY: the range is a whole mapping of this process that is not writable, is backed
        // by a file and holds no anonymous (copy-on-write) page, so every page of it is the
        // file's content: dropping it loses nothing, and the next access maps it again from
        // the page cache. No Rust object lives in such a mapping.
        let done =
            unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED) };
        if done == 0 {
            released += end - start;
        }
    }
    released
}

/// The address ranges of mappings in `smaps` text that may be dropped: readable, not
/// writable, backed by a file (a path), with `Anonymous: 0 kB`. Relocated data (RELRO) is
/// read-only too but was written at start-up, so it has anonymous pages and is kept.
fn clean_file_mappings(smaps: &str) -> Vec<(usize, usize)> {
    let mut found = Vec::new();
    let mut current: Option<(usize, usize)> = None;
    for line in smaps.lines() {
        if let Some(range) = mapping_header(line) {
            current = range;
            continue;
        }
        if let Some(anonymous) = line.strip_prefix("Anonymous:")
            && let Some(range) = current.take()
            && anonymous.trim() == "0 kB"
        {
            found.push(range);
        }
    }
    found
}

/// For a mapping's header line: `Some(Some(range))` if it is a candidate, `Some(None)` if it
/// is a mapping that must be kept; `None` for a field line.
fn mapping_header(line: &str) -> Option<Option<(usize, usize)>> {
    let mut fields = line.split_whitespace();
    let range = fields.next()?;
    let (start, end) = range.split_once('-')?;
    let start = usize::from_str_radix(start, 16).ok()?;
    let end = usize::from_str_radix(end, 16).ok()?;
    let perms = fields.next()?.as_bytes();
    let path = fields.nth(3).unwrap_or("");
    let candidate = perms.len() == 4
        && perms[0] == b'r'
        && perms[1] == b'-'
        && path.starts_with('/')
        && end > start;
    Some(candidate.then_some((start, end)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMAPS: &str = "\
5600a0000000-5600a01ad000 r--p 00000000 fe:00 5922842                    /usr/bin/redis-pair
Size:               1716 kB
Rss:                 916 kB
Anonymous:             0 kB
VmFlags: rd mr mw me
5600a01ad000-5600a0894000 r-xp 001ad000 fe:00 5922842                    /usr/bin/redis-pair
Rss:                5152 kB
Anonymous:             0 kB
5600a0894000-5600a08d8000 r--p 00894000 fe:00 5922842                    /usr/bin/redis-pair
Rss:                 272 kB
Anonymous:           272 kB
5600a08d8000-5600a08da000 rw-p 008d7000 fe:00 5922842                    /usr/bin/redis-pair
Anonymous:             8 kB
5600a1000000-5600a1100000 rw-p 00000000 00:00 0                          [heap]
Anonymous:           512 kB
7f0000000000-7f0000028000 r--p 00000000 fe:00 100                        /usr/lib/libc.so.6
Anonymous:             0 kB
7f0000028000-7f00001b0000 r-xp 00028000 fe:00 100                        /usr/lib/libc.so.6
Anonymous:             0 kB
7f00001b0000-7f00001b4000 ---p 001b0000 fe:00 100                        /usr/lib/libc.so.6
Anonymous:             0 kB
7ffd00000000-7ffd00002000 r-xp 00000000 00:00 0                          [vdso]
Anonymous:             0 kB
7ffd00002000-7ffd00004000 r--p 00000000 00:00 0                          [vvar]
Anonymous:             0 kB
";

    #[test]
    fn only_read_only_file_mappings_without_written_pages_are_released() {
        assert_eq!(
            clean_file_mappings(SMAPS),
            [
                (0x5600a0000000, 0x5600a01ad000),
                (0x5600a01ad000, 0x5600a0894000),
                (0x7f0000000000, 0x7f0000028000),
                (0x7f0000028000, 0x7f00001b0000),
            ]
        );
    }

    #[test]
    fn this_process_keeps_working_after_releasing_its_code() {
        let before: Vec<u64> = (0..1000).map(|n| n * n).collect();
        assert!(release_startup_pages() > 0);
        let after: Vec<u64> = (0..1000).map(|n| n * n).collect();
        assert_eq!(before, after);
        assert!(format!("{after:?}").starts_with("[0, 1, 4"));
    }
}
