"""Troubleshooting that was tried: symptom -> cause -> check -> fix rows, one source for the
operators' table (README.md, between marker comments) and the hospital ICT team's table (each
site kit's README, rendered by nina.kit).

Every row names the test that really produces its failure with the project's labs and programs
(`tests/<file>::<test>`): that test asserts the row's `symptom` appears in what the program
printed or logged, and runs the row's `check` (with the lab's paths in place of the host's) and
asserts it shows the cause. `tests/test_troubleshooting.py` fails if a row has no such test, or
more than one, or if README.md's section differs from `readme_section()`.

Placeholders in `symptom`, `where`, `check`, `shows` and `fix` are `{name}`: the fixed ones
(`FIXED`, from nina.facts) are filled everywhere; the per-site ones (`PER_SITE`) are filled with a
kit's own values and appear as `<name>` in the operators' table.

`python -m nina.troubleshooting --readme` prints the README section (between its markers).
"""

from __future__ import annotations

import argparse
import string
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from nina import facts

OPERATOR = "operator"
SITE = "site"
AUDIENCES = (OPERATOR, SITE)

BEGIN = "<!-- BEGIN nina.troubleshooting: generated, do not edit; regenerate with .venv/bin/python -m nina.troubleshooting --write README.md -->"
END = "<!-- END nina.troubleshooting -->"

# Filled in every table (and replaced by the tests with their labs' paths).
FIXED: dict[str, str] = {
    "allow_dir": facts.OPENVPN_ALLOW_DIR,
    "ccd_dir": facts.OPENVPN_CCD_DIR,
    "vpn_server_unit": facts.OPENVPN_SERVER_UNIT,
    "ca": f"{facts.SUPERNODE_CERTS}/{facts.CA_CERT_FILE}",
    "supernode_pub": f"{facts.SUPERNODE_CERTS}/{facts.SUPERNODE_PUB_FILE}",
    "supernode_conf": facts.SUPERNODE_CONF,
    "supernode_unit": facts.SUPERNODE_UNIT,
    "vpn_client_unit": facts.OPENVPN_CLIENT_UNIT,
    "vpn_issued_dir": f"{facts.OPENVPN_CLIENT_CERTS}/{facts.OPENVPN_ISSUED_DIR}",
    "superlink_unit": facts.SUPERLINK_UNIT,
    "membership": facts.MEMBERSHIP_BIN,
    "bootstrap_check": facts.BOOTSTRAP_CHECK_BIN,
    "state_dir": facts.SUPERLINK_STATE_DIR,
    "state_backup": facts.SUPERLINK_BACKUP_BIN,
    "gpu_driver_unit": facts.GPU_DRIVER_UNIT,
    "dcgm_unit": facts.DCGM_UNIT,
    "dcgm_exporter_unit": facts.DCGM_EXPORTER_UNIT,
}
# One organisation's or host's own values: a kit fills them, the operators' table names them.
PER_SITE = ("slug", "superlink_host", "fleet_port", "hostname")


@dataclass(frozen=True)
class Row:
    id: str
    audience: str  # OPERATOR or SITE
    symptom: str  # the exact text the program prints or logs (its test asserts it)
    where: str  # where that text shows
    cause: str
    check: str  # one shell command (its test runs it)
    shows: str  # what the check shows when this is the cause
    fix: str
    test: str  # tests/<file>.py::<test> that produces the failure and runs the check
    vpn: bool = False  # only for organisations on premise (the kits of cloud SuperNodes have no VPN)


_S_CLIENT = (
    "openssl s_client -connect {superlink_host}:{fleet_port} -CAfile {ca} -verify_ip {superlink_host} -verify_return_error </dev/null"
)

ROWS: tuple[Row, ...] = (
    Row(
        id="vpn-not-admitted",
        audience=OPERATOR,
        symptom="nina-vpn-verify: refused: {slug} is not admitted (no {allow_dir}/{slug})",
        where="the VPN host's journal: `journalctl -u {vpn_server_unit}`; the site sees its tunnel never come up",
        cause="the organisation has no client-config-dir entry and no allow file: it is not (or no longer) in `nina:organisations` of this stack",
        check="ls {ccd_dir}/{slug} {allow_dir}/{slug}",
        shows="`No such file or directory` for both",
        fix="add the organisation to `nina:organisations` (`nina config check`) and `pulumi up`: the delivery writes both files, nothing restarts. If it was removed on purpose, tell the site",
        test="tests/test_vpn_tunnel.py::test_removed_organisation_is_disconnected_and_refused_without_a_restart",
    ),
    Row(
        id="vpn-replaced-kit",
        audience=OPERATOR,
        symptom="nina-vpn-verify: refused: {slug}: tls-crypt-v2 key",
        where="the VPN host's journal: `journalctl -u {vpn_server_unit}`",
        cause="the site still runs a kit that was replaced (revoked): its tls-crypt-v2 key is not the organisation's current one",
        check="cat {allow_dir}/{slug}",
        shows="a `tls-crypt-v2` key id other than the one the refusal names",
        fix="send the site its current kit (`nina kit export`); the old kit stays refused",
        test="tests/test_vpn_tunnel.py::test_replaced_kit_old_key_and_certificate_refused_new_kit_connects_without_a_restart",
    ),
    Row(
        id="vpn-no-answer",
        audience=SITE,
        symptom="TLS Error: TLS handshake failed",
        where="`journalctl -u {vpn_client_unit}`, after `TLS key negotiation failed to occur within 60 seconds`, again and again; `Initialization Sequence Completed` never shows",
        cause="the VPN server does not answer this kit: the platform no longer admits it (the organisation was removed, or this kit was replaced by a newer one), or your firewall blocks the VPN server (section 3)",
        check="openssl x509 -noout -fingerprint -sha256 -in {vpn_issued_dir}/{slug}.crt",
        shows="this kit's VPN certificate fingerprint: send it to the operators, who compare it with the one the VPN server admits",
        fix="install the current kit the operators send you; if they admit this one, open your firewall as section 3 says",
        test="tests/test_vpn_tunnel.py::test_replaced_kit_old_key_and_certificate_refused_new_kit_connects_without_a_restart",
        vpn=True,
    ),
    Row(
        id="supernode-not-registered",
        audience=SITE,
        symptom="No SuperNode found with the given public key",
        where="`journalctl -u {supernode_unit}` (FAILED_PRECONDITION; the service restarts and fails again)",
        cause="the platform has not (or no longer) registered this kit's SuperNode key: the organisation was removed or its kit replaced",
        check="ssh-keygen -l -f {supernode_pub}",
        shows="the key's fingerprint: send it to the operators, who find no registration for it",
        fix="ask the operators to register the organisation (or send you its current kit) and install that kit",
        test="tests/test_rehearse.py::test_removed_organisation_is_refused_and_the_rest_completes",
    ),
    Row(
        id="supernode-key-unknown-at-superlink",
        audience=OPERATOR,
        symptom="No SuperNode found with the given public key",
        where="the site's `journalctl -u {supernode_unit}` (the site sends it)",
        cause="no registration for the organisation on its tenancy's SuperLink (removed from the config, or a kit replaced and not yet deployed)",
        check="{membership} list",
        shows="no member `{slug}` (run as root on the SuperLink host, through the bastion)",
        fix="keep the organisation in `nina:organisations` and `pulumi up` (registers the kit's key); if its kit was replaced, send the site the current one",
        test="tests/test_rehearse.py::test_removed_organisation_is_refused_and_the_rest_completes",
    ),
    Row(
        id="tls-name-mismatch",
        audience=SITE,
        symptom="Connection attempt failed",
        where="`journalctl -u {supernode_unit}`, again and again (flwr names no reason)",
        cause="the SuperNode dials an address the SuperLink's certificate does not name (`superlink_server` in `{supernode_conf}` was changed)",
        check=_S_CLIENT,
        shows="`IP address mismatch` (verify error 64)",
        fix="put the kit's `{supernode_conf}` back (`install.sh` again): it must dial {superlink_host}",
        test="tests/test_rehearse.py::test_supernode_dialling_an_address_outside_the_sans_fails_verification",
    ),
    Row(
        id="superlink-unreachable",
        audience=SITE,
        symptom="Connection attempt failed",
        where="`journalctl -u {supernode_unit}`, again and again (flwr names no reason: the check tells this row from the one above)",
        cause="nothing answers at the SuperLink's address: the VPN is down, a firewall drops it, or the SuperLink is not running",
        check=_S_CLIENT,
        shows="`Connection refused` or a timeout, and no certificate",
        fix="on premise, check the tunnel first (the VPN section above); otherwise send the operators this output: they check `{superlink_unit}` on the SuperLink host",
        test="tests/test_rehearse.py::test_supernode_without_a_superlink_reports_it_unreachable",
    ),
    Row(
        id="clock-skew",
        audience=SITE,
        symptom="CERTIFICATE_VERIFY_FAILED: certificate is not yet valid",
        where="`journalctl -u {supernode_unit}`",
        cause="this host's clock is behind: the SuperLink's certificate starts later than the host's `date -u`",
        check="date -u; " + _S_CLIENT,
        shows="`certificate is not yet valid` and a `notBefore=` later than the date printed first",
        fix="set the clock from NTP (`timedatectl set-ntp true`, or chrony) and restart `{supernode_unit}`",
        test="tests/test_rehearse.py::test_supernode_whose_clock_is_behind_the_certificate_fails_tls",
    ),
    Row(
        id="bootstrap-failed",
        audience=OPERATOR,
        symptom="refusing to deliver to {hostname}",
        where="`pulumi up` (a delivery command's error), followed by cloud-init's `status: error`",
        cause="a first-boot step of the VM failed (for example pip could not reach its index): the bootstrap marker was never written",
        check="{bootstrap_check}",
        shows="one `FAILED:` line per broken postcondition (run as root on the host, through the bastion; `cloud-init status --long` names the step)",
        fix="fix the cause (network, mirror), then replace the VM: `pulumi up --replace` on its instance; deliveries follow",
        test="tests/test_bootlab.py::test_boot_lab_hosts_boot_take_deliveries_and_federate_with_a_hospital",
    ),
    Row(
        id="state-volume-full",
        audience=OPERATOR,
        symptom="No space left on device",
        where="`{state_backup} restore` (exit 1); whatever else writes to the state volume fails too",
        cause="the SuperLink's state volume ({state_dir}) is full",
        check="df -h {state_dir}",
        shows="`Use%` at 100%",
        fix="remove what is not the SuperLink's from it; or raise `superlink.state_volume_gb`, check with `pulumi preview` that the volume is extended, not replaced (not tried here), `pulumi up`, then `resize2fs` its file system on the host",
        test="tests/test_state_backup.py::test_restore_onto_a_full_state_volume_says_so",
    ),
    Row(
        id="gpu-not-ready",
        audience=OPERATOR,
        symptom="nina-gpu-driver: FAILED: not ready:",
        where="`pulumi up`: the error of a GPU host's `<host>-gpu-ready` (after the driver's reboot); the line names each thing missing",
        cause="the GPU SuperNode rebooted but its GPU did not come up: no GPU passed to the VM, the driver not loaded, or DCGM or its exporter not running",
        check="nvidia-smi -L",
        shows="`No devices were found` (no GPU in the VM), or `NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver` (the driver is not loaded)",
        fix="on the host: `journalctl -b -u {gpu_driver_unit} -u {dcgm_unit} -u {dcgm_exporter_unit}`; `lspci | grep -i nvidia` (does the flavor pass a GPU?); fix, then `pulumi up` again (the ready step re-runs alone)",
        test="tests/test_gpu_driver.py::test_ready_on_a_host_whose_gpu_does_not_come_up_fails_in_one_line",
    ),
)

_FIELDS = ("symptom", "where", "cause", "check", "shows", "fix")


class TroubleshootingError(ValueError):
    pass


def placeholders(text: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(text) if name}


def fill(text: str, values: Mapping[str, str]) -> str:
    """`text` with its placeholders filled from FIXED and `values` (`values` wins); every one must be known."""
    known = {**FIXED, **values}
    missing = placeholders(text) - set(known)
    if missing:
        raise TroubleshootingError(f"no value for {', '.join(sorted(missing))} in {text!r}")
    return text.format_map(known)


def row(row_id: str) -> Row:
    for r in ROWS:
        if r.id == row_id:
            return r
    raise KeyError(row_id)


def rows(audience: str) -> list[Row]:
    if audience not in AUDIENCES:
        raise TroubleshootingError(f"audience {audience!r} is not one of {', '.join(AUDIENCES)}")
    return [r for r in ROWS if r.audience == audience]


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def table(audience: str, values: Mapping[str, str] | None = None, *, vpn: bool = True) -> str:
    """The Markdown table of `audience`'s rows (without the VPN's if not `vpn`); per-site
    placeholders not in `values` become `<name>`."""
    filled = {**{name: f"<{name}>" for name in PER_SITE}, **(values or {})}
    lines = ["| symptom | seen in | cause | check | the check shows | fix |", "|---|---|---|---|---|---|"]
    for r in rows(audience):
        if r.vpn and not vpn:
            continue
        cells = [fill(getattr(r, f), filled) for f in _FIELDS]
        cells[0], cells[3] = f"`{cells[0]}`", f"`{cells[3]}`"
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


def readme_section() -> str:
    """README.md's operator table, with its markers (what `--readme` prints)."""
    return f"{BEGIN}\n{table(OPERATOR)}{END}\n"


def replace_section(text: str, section: str) -> str:
    """`text` with the part between the markers (inclusive) replaced by `section`."""
    start, end = text.find(BEGIN), text.find(END)
    if start < 0 or end < start or text.count(BEGIN) != 1 or text.count(END) != 1:
        raise TroubleshootingError(f"README.md must hold the markers {BEGIN!r} and {END!r} once each, in that order")
    return text[:start] + section + text[end + len(END) + 1 :]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nina.troubleshooting", description="The troubleshooting tables.")
    parser.add_argument("--readme", action="store_true", help="print README.md's section (with its markers)")
    parser.add_argument("--write", metavar="README", type=Path, help="replace the section in this README.md")
    parser.add_argument("--site", action="store_true", help="print the site kits' table (per-site values as <name>)")
    args = parser.parse_args(argv)
    if args.write:
        try:
            args.write.write_text(replace_section(args.write.read_text(encoding="utf-8"), readme_section()), encoding="utf-8")
        except (OSError, TroubleshootingError) as exc:
            print(f"nina.troubleshooting: {exc}", file=sys.stderr)
            return 1
        return 0
    sys.stdout.write(table(SITE) if args.site else readme_section())
    return 0


if __name__ == "__main__":
    sys.exit(main())
