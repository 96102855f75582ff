//! Makes the eBPF object's BTF acceptable to the kernel's checker, at build time.
//!
//! Rust names types after their generics (`MaybeUninit<u8>`, `Option<&[u8]>`), and bpf-linker
//! 0.10 writes those names into BTF as they are. The kernel accepts only C identifiers as the
//! names of types, members, enumerators, functions and variables, so it refused the whole BTF
//! (`[64] UNION MaybeUninit<u8> ... Invalid name`, on 6.1, 6.12 and 6.18 alike) and aya loaded
//! the programs without it: no source lines in verifier logs, and no BTF for the maps.
//!
//! [`sanitize`] rewrites, in place, every byte of such a name that is not `[A-Za-z0-9_]` into
//! `_` (`MaybeUninit_u8_`). Lengths and offsets stay the same, so nothing else in the object
//! moves. Section names (`DATASEC`, e.g. `.bss`) keep their dots, which the kernel allows there.
//! `build.rs` includes this file and applies it to the `.BTF` section of each object it builds;
//! the library compiles it only for its unit tests.

/// What went wrong reading a `.BTF` section.
#[derive(Debug, PartialEq, Eq)]
pub enum BtfError {
    /// Not little-endian BTF (magic 0xEB9F), or a header that does not fit.
    Header,
    /// A type record of an unknown kind, or one running past the type section.
    Type { offset: usize },
    /// A name offset outside the string section.
    Name { offset: u32 },
}

const MAGIC: u16 = 0xEB9F;

/// Rewrites the invalid names in a little-endian `.BTF` section. Returns how many names changed.
pub fn sanitize(btf: &mut [u8]) -> Result<usize, BtfError> {
    let u16_at = |b: &[u8], o: usize| b.get(o..o + 2).map(|s| u16::from_le_bytes([s[0], s[1]]));
    let u32_at = |b: &[u8], o: usize| {
        b.get(o..o + 4)
            .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
    };
    if u16_at(btf, 0) != Some(MAGIC) {
        return Err(BtfError::Header);
    }
    let field = |o| u32_at(btf, o).map(|v| v as usize).ok_or(BtfError::Header);
    let hdr_len = field(4)?;
    let (type_off, type_len) = (hdr_len + field(8)?, field(12)?);
    let (str_off, str_len) = (hdr_len + field(16)?, field(20)?);
    if type_off + type_len > btf.len() || str_off + str_len > btf.len() {
        return Err(BtfError::Header);
    }
    // First collect the names to fix (offset into the strings, and whether dots are allowed),
    // then rewrite: the type records are read-only while we walk them.
    let mut names: Vec<(u32, bool)> = Vec::new();
    let mut at = type_off;
    let end = type_off + type_len;
    while at < end {
        let record = at;
        let bad = || BtfError::Type {
            offset: record - type_off,
        };
        let name = u32_at(btf, at).ok_or_else(bad)?;
        let info = u32_at(btf, at + 4).ok_or_else(bad)?;
        let vlen = (info & 0xffff) as usize;
        let kind = (info >> 24) & 0x1f;
        at += 12;
        // (bytes per trailing record, whether each record starts with a name)
        let (extra, each, named) = match kind {
            1 => (4, 0, false),                    // INT
            2 | 7..=12 | 16 | 18 => (0, 0, false), // PTR FWD TYPEDEF VOLATILE CONST RESTRICT FUNC FLOAT TYPE_TAG
            3 => (12, 0, false),                   // ARRAY
            4 | 5 => (0, 12, true),                // STRUCT UNION: members
            6 => (0, 8, true),                     // ENUM: enumerators
            13 => (0, 8, true),                    // FUNC_PROTO: parameters
            14 => (4, 0, false),                   // VAR
            15 => (0, 12, false),                  // DATASEC: variables by type id
            17 => (4, 0, false),                   // DECL_TAG
            19 => (0, 12, true),                   // ENUM64
            _ => return Err(bad()),
        };
        names.push((name, kind == 15));
        at += extra;
        for _ in 0..vlen {
            if named {
                let member = u32_at(btf, at).ok_or_else(bad)?;
                names.push((member, false));
            }
            at += each;
        }
        if at > end {
            return Err(bad());
        }
    }
    // Every name is checked before any is changed, so a malformed section is left as it was.
    let mut spans = Vec::with_capacity(names.len());
    for (name, section) in names {
        let start = str_off + name as usize;
        if name as usize >= str_len {
            return Err(BtfError::Name { offset: name });
        }
        let len = btf[start..str_off + str_len]
            .iter()
            .position(|&b| b == 0)
            .ok_or(BtfError::Name { offset: name })?;
        spans.push((start, len, section));
    }
    let mut changed = 0;
    for (start, len, section) in spans {
        let mut touched = false;
        for b in &mut btf[start..start + len] {
            let ok = b.is_ascii_alphanumeric() || *b == b'_' || (section && *b == b'.');
            if !ok {
                *b = b'_';
                touched = true;
            }
        }
        changed += usize::from(touched);
    }
    Ok(changed)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A BTF section with the given type records and string table.
    fn btf(types: &[u32], strings: &[u8]) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend(MAGIC.to_le_bytes());
        b.extend([1u8, 0]);
        let type_len = (types.len() * 4) as u32;
        for v in [24u32, 0, type_len, type_len, strings.len() as u32] {
            b.extend(v.to_le_bytes());
        }
        for t in types {
            b.extend(t.to_le_bytes());
        }
        b.extend(strings);
        b
    }

    fn strings_of(b: &[u8], n: usize) -> &[u8] {
        &b[b.len() - n..]
    }

    #[test]
    fn generic_names_become_identifiers_and_section_names_keep_their_dots() {
        // strings: "" | "MaybeUninit<u8>" | "value" | ".bss" | "Option<&[u8]>"
        let strings = b"\0MaybeUninit<u8>\0value\0.bss\0Option<&[u8]>\0";
        let types = [
            // [1] UNION "MaybeUninit<u8>", 1 member "value"
            1,
            (5 << 24) | 1,
            1,
            17,
            1,
            0,
            // [2] DATASEC ".bss", 1 variable
            23,
            (15 << 24) | 1,
            0,
            1,
            0,
            1,
            // [3] TYPEDEF "Option<&[u8]>"
            28,
            8 << 24,
            1,
        ];
        let mut b = btf(&types, strings);
        assert_eq!(sanitize(&mut b), Ok(2));
        assert_eq!(
            strings_of(&b, strings.len()),
            b"\0MaybeUninit_u8_\0value\0.bss\0Option___u8__\0"
        );
        // Idempotent: a second pass finds nothing to change.
        assert_eq!(sanitize(&mut b), Ok(0));
    }

    #[test]
    fn a_malformed_section_is_refused_and_left_alone() {
        let strings = b"\0a<b>\0";
        let mut unknown_kind = btf(&[1, 31 << 24, 0], strings);
        let before = unknown_kind.clone();
        assert_eq!(
            sanitize(&mut unknown_kind),
            Err(BtfError::Type { offset: 0 })
        );
        assert_eq!(unknown_kind, before);
        let mut name_out_of_range = btf(&[99, 8 << 24, 0], strings);
        assert_eq!(
            sanitize(&mut name_out_of_range),
            Err(BtfError::Name { offset: 99 })
        );
        assert_eq!(sanitize(&mut [0u8; 30]), Err(BtfError::Header));
    }
}
