//! PostgreSQL's client encoding names: the aliases it accepts and the
//! canonical name it reports back in ParameterStatus (`utf-8` -> `UTF8`,
//! `euc-jp` -> `EUC_JP`). Drivers compare that value (psycopg does), so the
//! proxy must report what the server would, not the client's spelling.

/// Every name PostgreSQL accepts for an encoding, cleaned as it cleans
/// them (ASCII letters and digits only, lower case), with the canonical
/// name (PostgreSQL 15, `src/common/encnames.c`; unchanged since 9.x but
/// for additions).
const ALIASES: &[(&str, &str)] = &[
    ("abc", "WIN1258"),
    ("alt", "WIN866"),
    ("big5", "BIG5"),
    ("euccn", "EUC_CN"),
    ("eucjis2004", "EUC_JIS_2004"),
    ("eucjp", "EUC_JP"),
    ("euckr", "EUC_KR"),
    ("euctw", "EUC_TW"),
    ("gb18030", "GB18030"),
    ("gbk", "GBK"),
    ("iso88591", "LATIN1"),
    ("iso885910", "LATIN6"),
    ("iso885913", "LATIN7"),
    ("iso885914", "LATIN8"),
    ("iso885915", "LATIN9"),
    ("iso885916", "LATIN10"),
    ("iso88592", "LATIN2"),
    ("iso88593", "LATIN3"),
    ("iso88594", "LATIN4"),
    ("iso88595", "ISO_8859_5"),
    ("iso88596", "ISO_8859_6"),
    ("iso88597", "ISO_8859_7"),
    ("iso88598", "ISO_8859_8"),
    ("iso88599", "LATIN5"),
    ("johab", "JOHAB"),
    ("koi8", "KOI8R"),
    ("koi8r", "KOI8R"),
    ("koi8u", "KOI8U"),
    ("latin1", "LATIN1"),
    ("latin10", "LATIN10"),
    ("latin2", "LATIN2"),
    ("latin3", "LATIN3"),
    ("latin4", "LATIN4"),
    ("latin5", "LATIN5"),
    ("latin6", "LATIN6"),
    ("latin7", "LATIN7"),
    ("latin8", "LATIN8"),
    ("latin9", "LATIN9"),
    ("mskanji", "SJIS"),
    ("muleinternal", "MULE_INTERNAL"),
    ("shiftjis", "SJIS"),
    ("shiftjis2004", "SHIFT_JIS_2004"),
    ("sjis", "SJIS"),
    ("sqlascii", "SQL_ASCII"),
    ("tcvn", "WIN1258"),
    ("tcvn5712", "WIN1258"),
    ("uhc", "UHC"),
    ("unicode", "UTF8"),
    ("utf8", "UTF8"),
    ("vscii", "WIN1258"),
    ("win", "WIN1251"),
    ("win1250", "WIN1250"),
    ("win1251", "WIN1251"),
    ("win1252", "WIN1252"),
    ("win1253", "WIN1253"),
    ("win1254", "WIN1254"),
    ("win1255", "WIN1255"),
    ("win1256", "WIN1256"),
    ("win1257", "WIN1257"),
    ("win1258", "WIN1258"),
    ("win866", "WIN866"),
    ("win874", "WIN874"),
    ("win932", "SJIS"),
    ("win936", "GBK"),
    ("win949", "UHC"),
    ("win950", "BIG5"),
    ("windows1250", "WIN1250"),
    ("windows1251", "WIN1251"),
    ("windows1252", "WIN1252"),
    ("windows1253", "WIN1253"),
    ("windows1254", "WIN1254"),
    ("windows1255", "WIN1255"),
    ("windows1256", "WIN1256"),
    ("windows1257", "WIN1257"),
    ("windows1258", "WIN1258"),
    ("windows866", "WIN866"),
    ("windows874", "WIN874"),
    ("windows932", "SJIS"),
    ("windows936", "GBK"),
    ("windows949", "UHC"),
    ("windows950", "BIG5"),
];

/// Longest name PostgreSQL looks up (NAMEDATALEN - 1).
const MAX_NAME: usize = 63;

/// The value PostgreSQL reports for `client_encoding = value`, or `None`
/// if it would refuse the name. Like PostgreSQL's `check_client_encoding`,
/// the exact spelling `UNICODE` is kept as it is, for old applications.
pub fn reported_client_encoding(value: &str) -> Option<&str> {
    if value == "UNICODE" {
        return Some(value);
    }
    if value.is_empty() || value.len() > MAX_NAME {
        return None;
    }
    let mut key = [0u8; MAX_NAME];
    let mut len = 0;
    for b in value.bytes().filter(u8::is_ascii_alphanumeric) {
        key[len] = b.to_ascii_lowercase();
        len += 1;
    }
    let key = &key[..len];
    ALIASES
        .binary_search_by(|(alias, _)| alias.as_bytes().cmp(key))
        .ok()
        .and_then(|i| ALIASES.get(i))
        .map(|(_, canonical)| *canonical)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aliases_map_to_canonical_names() {
        assert!(ALIASES.windows(2).all(|w| w[0].0 < w[1].0), "sorted");
        for (value, want) in [
            ("utf-8", "UTF8"),
            ("UTF8", "UTF8"),
            ("Utf_8", "UTF8"),
            ("unicode", "UTF8"),
            ("UNICODE", "UNICODE"),
            ("euc-jp", "EUC_JP"),
            ("EUC_JP", "EUC_JP"),
            ("ISO-8859-1", "LATIN1"),
            ("iso_8859_5", "ISO_8859_5"),
            ("SQL_ASCII", "SQL_ASCII"),
            ("Shift_JIS", "SJIS"),
            ("windows-1252", "WIN1252"),
        ] {
            assert_eq!(reported_client_encoding(value), Some(want), "{value}");
        }
    }

    #[test]
    fn every_canonical_name_is_its_own_alias() {
        for (_, canonical) in ALIASES {
            assert_eq!(reported_client_encoding(canonical), Some(*canonical));
        }
    }

    #[test]
    fn unknown_names_are_refused() {
        for value in ["", "auto", "utf-16", "-", "x".repeat(64).as_str(), "ütf8"] {
            assert_eq!(reported_client_encoding(value), None, "{value:?}");
        }
    }
}
