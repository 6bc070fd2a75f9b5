//! When two names look alike: the key names are compared by.
//!
//! Two live participants must not have names a reader cannot tell apart.
//! Names are kept as typed, for display; they are compared by their
//! [`skeleton`]: compatibility normalization (NFKC: fullwidth "Ａ" is "A",
//! "ﬁ" is "fi"), case folding, then the skeleton of Unicode TS #39
//! (canonical decomposition, default-ignorable characters removed, each
//! character replaced by its confusable prototype from the Unicode
//! confusables data, as the `unicode-security` crate ships it). "Alice",
//! "alice", "ALICE", "Аlice" (Cyrillic А), "Aliсe" (Cyrillic с), "Ａlice"
//! and "José" composed or decomposed all have one skeleton.

use unicode_normalization::UnicodeNormalization;

/// The comparison key of `name`: equal for names a reader may take for
/// each other. Deterministic, and the same on every node of one version
/// (it depends only on the Unicode data compiled in).
pub fn skeleton(name: &str) -> String {
    use unicode_security::skeleton as uts39;
    let compatible: String = name.nfkc().collect();
    // Confusables are not closed under case: capital Cyrillic "М" looks
    // like "M" but its small "м" not like "m"; small Cyrillic "п" looks
    // like "n" but its capital "П" not like "N"; "I" is taken for "l".
    // So: the confusables of the text as typed, then of it in capitals,
    // then of it in small letters, which is the key.
    let typed: String = uts39(&compatible).flat_map(char::to_uppercase).collect();
    let capitals: String = uts39(&typed).flat_map(char::to_lowercase).collect();
    uts39(&capitals).flat_map(char::to_lowercase).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn look_alikes_of_alice_share_her_skeleton() {
        let alice = skeleton("Alice");
        for like in [
            "alice",
            "ALICE",
            "\u{410}lice",  // Cyrillic capital A
            "Ali\u{441}e",  // Cyrillic small es
            "\u{FF21}lice", // fullwidth A
            "\u{FF41}\u{FF4C}\u{FF49}\u{FF43}\u{FF45}",
            "A\u{200B}lice".trim(), // not a valid name, but no different
        ] {
            assert_eq!(skeleton(like), alice, "{like:?}");
        }
        // Capital Cyrillic look-alikes, and "rn" for "m".
        for like in ["\u{405}\u{410}\u{41c}", "SAM", "sarn", "\u{405}am"] {
            assert_eq!(skeleton(like), skeleton("Sam"), "{like:?}");
        }
        for other in ["Alicia", "Bob", "Alice 2", "Al ice"] {
            assert_ne!(skeleton(other), alice, "{other:?}");
        }
    }

    #[test]
    fn composed_and_decomposed_are_one_name() {
        let composed = "Jos\u{E9}";
        let decomposed = "Jose\u{301}";
        assert_ne!(composed, decomposed);
        assert_eq!(skeleton(composed), skeleton(decomposed));
        assert_eq!(skeleton(composed), skeleton("JOS\u{C9}"));
    }

    #[test]
    fn a_skeleton_is_its_own_skeleton() {
        for name in [
            "Alice",
            "Il1|",
            "Ｒｏｂ",
            "Zoë 🦀",
            "ǅemal",
            "ß",
            "İstanbul",
            "rn m",
        ] {
            let key = skeleton(name);
            assert_eq!(skeleton(&key), key, "{name:?}");
        }
    }
}
