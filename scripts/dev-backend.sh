# Sourced by scripts/up-dev and scripts/down-dev, from the repository's root: the dev stack's
# Pulumi backend and CLI, for these scripts' own runs.

# The dev stack's state lives in this checkout. The variable applies to this run alone: the
# user's own login (`pulumi login`, ~/.pulumi/credentials.json) is neither read nor changed.
export PULUMI_BACKEND_URL="file://$PWD/.pulumi-state"
DEV_STACK=dev
# The CLI release of the Python SDK that requirements.txt pins: a CLI older than its SDK is not
# supported.
PULUMI_VERSION=$(sed -n 's/^pulumi==\([0-9][0-9.]*\).*/\1/p' requirements.txt)
# Where the pinned CLI is installed when the one on PATH is missing or too old: this checkout,
# so a CLI the user installed elsewhere is left as it is.
PULUMI_CLI_ROOT="$PWD/.pulumi-cli"
PULUMI_INSTALLER_URL=https://get.pulumi.com
PULUMI_INSTALL_DOCS=https://www.pulumi.com/docs/iac/download-install/

say() { echo "${0##*/}: $*"; }
fail() { echo "${0##*/}: $*" >&2; exit 1; }

version_at_least() {  # VERSION MINIMUM
  [ "$(printf '%s\n%s\n' "$2" "$1" | sort -V | head -n1)" = "$2" ]
}

pulumi_version() {
  pulumi version 2>/dev/null | sed -n '1s/^v//p'
}

# The pinned release, by Pulumi's official installer, into $PULUMI_CLI_ROOT.
install_pulumi_cli() {
  command -v curl >/dev/null || fail "curl is needed to download Pulumi's installer: install curl, or install the Pulumi CLI v$PULUMI_VERSION yourself ($PULUMI_INSTALL_DOCS), and rerun"
  local installer errors reason
  installer=$(mktemp) errors=$(mktemp)
  say "installing the Pulumi CLI v$PULUMI_VERSION into ${PULUMI_CLI_ROOT#"$PWD/"}/ (once, for this checkout)"
  if ! curl -fsSL --proto '=https' --retry 2 -o "$installer" "$PULUMI_INSTALLER_URL" 2>"$errors"; then
    reason=$(tr '\n' ' ' <"$errors" | sed 's/ *$//')
    rm -f "$installer" "$errors"
    fail "could not download Pulumi's installer from $PULUMI_INSTALLER_URL (${reason:-curl failed}): check the network and the proxy settings (HTTPS_PROXY), or install the Pulumi CLI v$PULUMI_VERSION yourself ($PULUMI_INSTALL_DOCS), and rerun"
  fi
  rm -f "$errors"
  if ! sh "$installer" --version "$PULUMI_VERSION" --install-root "$PULUMI_CLI_ROOT" --no-edit-path; then
    rm -f "$installer"
    fail "Pulumi's installer could not install v$PULUMI_VERSION (its message is above): check the network and the proxy settings (HTTPS_PROXY), or install the Pulumi CLI v$PULUMI_VERSION yourself ($PULUMI_INSTALL_DOCS), and rerun"
  fi
  rm -f "$installer"
  hash -r  # bash remembers where it last found `pulumi`: forget it, so the new CLI is used
}

# A Pulumi CLI at the SDK's version or newer on PATH: this checkout's copy first, else the
# user's, else the pinned release installed for this checkout.
use_pulumi_cli() {
  [ -n "$PULUMI_VERSION" ] || fail "requirements.txt pins no pulumi==VERSION: the Pulumi CLI's version cannot be chosen"
  PATH="$PULUMI_CLI_ROOT/bin:$PATH"
  local found
  found=$(pulumi_version || true)
  if [ -n "$found" ] && version_at_least "$found" "$PULUMI_VERSION"; then
    say "Pulumi CLI v$found ($(command -v pulumi))"
    return
  fi
  if [ -n "$found" ]; then
    say "the Pulumi CLI on PATH is v$found, older than v$PULUMI_VERSION (the Python SDK's pin)"
  fi
  install_pulumi_cli
  found=$(pulumi_version || true)
  [ -n "$found" ] && version_at_least "$found" "$PULUMI_VERSION" \
    || fail "the Pulumi CLI in ${PULUMI_CLI_ROOT#"$PWD/"}/ reports version '${found}', not v$PULUMI_VERSION: remove ${PULUMI_CLI_ROOT#"$PWD/"}/ and rerun"
  say "Pulumi CLI v$found ($(command -v pulumi))"
}
