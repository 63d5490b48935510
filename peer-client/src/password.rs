//! Where a command-line password comes from: `AGORA_PASSWORD` (for
//! scripts), else a prompt on the terminal that does not echo.
//!
//! The password never leaves this machine: it only feeds OPAQUE and
//! Argon2 (see [`account`](crate::account)). Buffers are wiped when dropped.

use zeroize::Zeroizing;

/// The environment variable scripts pass a password in.
pub const PASSWORD_ENV: &str = "AGORA_PASSWORD";

/// Shortest password accepted when registering from the command line.
pub const MIN_PASSWORD_CHARS: usize = 8;

/// Why no password could be had.
#[derive(Debug, thiserror::Error)]
pub enum PasswordError {
    /// No terminal to prompt on, and no `AGORA_PASSWORD`.
    #[error("there is no terminal to ask for the password on; set {PASSWORD_ENV}")]
    NoTerminal(#[source] std::io::Error),
    /// The two entries at registration differ.
    #[error("the two passwords differ; try again")]
    Mismatch,
    /// The password is empty.
    #[error("the password is empty")]
    Empty,
    /// The password is too short for a new account.
    #[error("a password has at least {MIN_PASSWORD_CHARS} characters")]
    TooShort,
}

/// The password for logging in: `AGORA_PASSWORD`, else asked once.
///
/// # Errors
/// When there is no terminal to ask on, or the password is empty.
pub fn login_password(prompt: &str) -> Result<Zeroizing<String>, PasswordError> {
    let password = match from_env() {
        Some(password) => password,
        None => ask(prompt)?,
    };
    if password.is_empty() {
        return Err(PasswordError::Empty);
    }
    Ok(password)
}

/// The password for a new account: `AGORA_PASSWORD`, else asked twice
/// (the entries must agree). At least [`MIN_PASSWORD_CHARS`] characters.
///
/// # Errors
/// When there is no terminal to ask on, the entries differ, or the
/// password is too short.
pub fn new_password(prompt: &str) -> Result<Zeroizing<String>, PasswordError> {
    let password = match from_env() {
        Some(password) => password,
        None => {
            let first = ask(prompt)?;
            let second = ask("Repeat the password: ")?;
            if first != second {
                return Err(PasswordError::Mismatch);
            }
            first
        }
    };
    check_new(&password)?;
    Ok(password)
}

/// The rules a new password must meet.
///
/// # Errors
/// [`PasswordError::TooShort`] / [`PasswordError::Empty`].
pub fn check_new(password: &str) -> Result<(), PasswordError> {
    if password.is_empty() {
        return Err(PasswordError::Empty);
    }
    if password.chars().count() < MIN_PASSWORD_CHARS {
        return Err(PasswordError::TooShort);
    }
    Ok(())
}

fn from_env() -> Option<Zeroizing<String>> {
    std::env::var(PASSWORD_ENV).ok().map(Zeroizing::new)
}

fn ask(prompt: &str) -> Result<Zeroizing<String>, PasswordError> {
    rpassword::prompt_password(prompt)
        .map(Zeroizing::new)
        .map_err(PasswordError::NoTerminal)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_passwords_have_a_minimum_length() {
        assert!(matches!(check_new(""), Err(PasswordError::Empty)));
        assert!(matches!(check_new("short"), Err(PasswordError::TooShort)));
        assert!(check_new("long enough").is_ok());
    }
}
