//! `--asn FILE`: the AS number of every hop address, from an offline iptoasn.com TSV table
//! (see `svctr_core::AsnTable`), loaded once before the run and applied to each result as
//! it is printed: in the text after the address (`[AS64512]`, as traceroute -A), in the JSON
//! (`asn` of each answered probe) and in the replies rows (`reply_asn`).

use std::path::Path;
use std::sync::OnceLock;

use svctr_core::{AsnTable, Hop};

use crate::error::CliError;

static TABLE: OnceLock<AsnTable> = OnceLock::new();

/// Loads the table (a clear one-line error for a file that is missing, compressed, empty or
/// not a table).
pub(crate) fn load(path: &Path) -> Result<(), CliError> {
    let what = |reason: String| CliError::input(format!("--asn {}: {reason}", path.display()));
    let bytes = std::fs::read(path).map_err(|e| what(format!("cannot read: {e}")))?;
    if bytes.starts_with(&[0x1f, 0x8b]) {
        return Err(what(
            "compressed (gzip): gunzip it first (iptoasn.com serves ip2asn-*.tsv.gz)".into(),
        ));
    }
    let text = String::from_utf8(bytes)
        .map_err(|_| what("not text: expected an ip2asn TSV table (iptoasn.com)".into()))?;
    let table = AsnTable::from_tsv(&text).map_err(|e| what(e.to_string()))?;
    if table.is_empty() {
        return Err(what("no ranges in it".into()));
    }
    let _ = TABLE.set(table);
    Ok(())
}

/// Whether a table is loaded.
pub(crate) fn loaded() -> bool {
    TABLE.get().is_some()
}

/// Sets the AS numbers of the hops' answered probes (nothing without a table).
pub(crate) fn annotate(hops: &mut [Hop]) {
    if let Some(t) = TABLE.get() {
        t.annotate(hops);
    }
}
