//! Enums whose values have names on the command line and in JSON: one macro gives each its
//! `as_str` and its `FromStr` (case-insensitive, with an error that lists the names), so the
//! names are written once.

/// `names!(Type, "what", Variant => "name", ...)`: see the module doc.
macro_rules! names {
    ($ty:ty, $what:literal, $($variant:ident => $name:literal),+ $(,)?) => {
        impl $ty {
            /// The name on the command line and in JSON.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $name),+
                }
            }
        }

        impl std::str::FromStr for $ty {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                $(if s.eq_ignore_ascii_case($name) {
                    return Ok(Self::$variant);
                })+
                Err(format!(
                    "unknown {} {s:?} (expected {})",
                    $what,
                    [$($name),+].join(", ")
                ))
            }
        }
    };
}
pub(crate) use names;
