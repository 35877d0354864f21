# Sourced by the scripts that write RESULTS.md: splice NAME FILE replaces the text between the
# <!-- BEGIN NAME --> / <!-- END NAME --> markers of RESULTS.md by FILE.
splice() {
    BODY="$(cat "$2")" awk -v name="$1" '
        $0 == "<!-- BEGIN " name " -->" { print; print ENVIRON["BODY"]; skip = 1; next }
        $0 == "<!-- END " name " -->" { skip = 0 }
        !skip { print }
    ' RESULTS.md > RESULTS.md.tmp && mv RESULTS.md.tmp RESULTS.md
}
