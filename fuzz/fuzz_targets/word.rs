//! Word expansion with BuildKit's rules, in every lexer mode.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rbuild::dockerfile::shell::Lexer;

fuzz_target!(|data: &[u8]| {
    let Ok(word) = std::str::from_utf8(data) else {
        return;
    };
    let env: Vec<(String, String)> = [("A", "a b"), ("B", ""), ("P", "/usr/bin"), ("X", "*?")]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    for escape in ['\\', '`'] {
        if let Ok(e) = Lexer::new(escape).process(word, &env) {
            let joined: usize = e.words.iter().map(String::len).sum();
            assert!(joined <= e.result.len());
        }
    }
    let _ = Lexer::heredoc_body().process_word(word, &env);
    let _ = Lexer::heredoc_line().process_words(word, &env);
});
