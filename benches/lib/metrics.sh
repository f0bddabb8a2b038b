# Reading a saved copy of surge's /metrics (sourced by the bench scripts).

metric_sum() { # metrics-file line-prefix -> the values of the lines starting so, summed
    awk -v p="$2" 'index($0, p) == 1 { s += $NF } END { printf "%d\n", s }' "$1"
}

over() { # metrics-file histogram le -> observations above that bucket's bound
    local total below
    total=$(metric_sum "$1" "$2_count ")
    below=$(metric_sum "$1" "$2_bucket{le=\"$3\"} ")
    echo $((total - below))
}
