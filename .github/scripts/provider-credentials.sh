#!/usr/bin/env bash
# Provider credentials for a deploying job, from environment variables that the ESC environment
# (pulumi/esc-action, values.environmentVariables) exported:
#   SSH_PRIVATE_KEY, SSH_KNOWN_HOSTS  Docker hosts reached over ssh:// (staging)
#   KUBECONFIG_DATA                   a kubeconfig (prod); written to a file, KUBECONFIG points at it
#   CLOUDFLARE_API_TOKEN              read by the program from stack config / ESC, nothing to do here
# Nothing is echoed; files are private to the runner user.
set -euo pipefail
umask 077
if [ -n "${SSH_PRIVATE_KEY:-}" ]; then
  mkdir -p "$HOME/.ssh"
  printf '%s\n' "$SSH_PRIVATE_KEY" > "$HOME/.ssh/id_matrix_stack"
  printf 'Host *\n  IdentityFile ~/.ssh/id_matrix_stack\n  IdentitiesOnly yes\n' > "$HOME/.ssh/config"
  if [ -z "${SSH_KNOWN_HOSTS:-}" ]; then
    echo "SSH_KNOWN_HOSTS is empty: refusing to trust Docker hosts blindly" >&2
    exit 1
  fi
  printf '%s\n' "$SSH_KNOWN_HOSTS" > "$HOME/.ssh/known_hosts"
fi
if [ -n "${KUBECONFIG_DATA:-}" ]; then
  mkdir -p "$RUNNER_TEMP/kube"
  printf '%s\n' "$KUBECONFIG_DATA" > "$RUNNER_TEMP/kube/config"
  echo "KUBECONFIG=$RUNNER_TEMP/kube/config" >> "$GITHUB_ENV"
fi
