{#-
    The run window: vars window_start / window_end (ISO-8601, [start, end); a
    timestamp without offset is UTC). Hourly models read and replace the hours
    in the window; monthly models read and replace the whole months it touches.
    Without the vars every model builds everything.
-#}

{#- none, or a dict of SQL-ready UTC literals:
    start / end: 'YYYY-MM-DD HH:MM:SS+00:00' (the window itself),
    first_day / end_day: 'YYYY-MM-DD', the first UTC day touched and the day
    after the last,
    first_month: 'YYYY-MM-DD', first day of the first month touched,
    end_month: 'YYYY-MM-DD', first day after the last month touched,
    hours: length of the window in hours. -#}
{% macro chargeback_window() -%}
    {%- set raw_start = var('window_start', none) -%}
    {%- set raw_end = var('window_end', none) -%}
    {%- if raw_start in (none, '') and raw_end in (none, '') -%}
        {{- return(none) -}}
    {%- endif -%}
    {%- if raw_start in (none, '') or raw_end in (none, '') -%}
        {{- exceptions.raise_compiler_error(
            "set both vars window_start and window_end, or neither (got"
            ~ " window_start=" ~ raw_start ~ ", window_end=" ~ raw_end ~ ")"
        ) -}}
    {%- endif -%}
    {%- set start = _chargeback_parse_utc('window_start', raw_start) -%}
    {%- set end = _chargeback_parse_utc('window_end', raw_end) -%}
    {%- if start >= end -%}
        {{- exceptions.raise_compiler_error(
            "window_start (" ~ start.isoformat() ~ ") must be before"
            ~ " window_end (" ~ end.isoformat() ~ ")"
        ) -}}
    {%- endif -%}
    {%- set dt = modules.datetime -%}
    {%- set last = end - dt.timedelta(microseconds=1) -%}
    {%- set first_month = dt.date(start.year, start.month, 1) -%}
    {%- if last.month == 12 -%}
        {%- set end_month = dt.date(last.year + 1, 1, 1) -%}
    {%- else -%}
        {%- set end_month = dt.date(last.year, last.month + 1, 1) -%}
    {%- endif -%}
    {{- return({
        'start': start.isoformat(' '),
        'end': end.isoformat(' '),
        'first_day': start.date().isoformat(),
        'end_day': (last.date() + dt.timedelta(days=1)).isoformat(),
        'first_month': first_month.isoformat(),
        'end_month': end_month.isoformat(),
        'hours': (end - start).total_seconds() / 3600,
    }) -}}
{%- endmacro %}

{#- A var (string, or datetime if YAML parsed it) as an aware UTC datetime. -#}
{% macro _chargeback_parse_utc(name, value) -%}
    {%- set dt = modules.datetime -%}
    {%- set iso = (
        '^[0-9]{4}-[0-9]{2}-[0-9]{2}'
        ~ '([ T][0-9]{2}(:[0-9]{2}(:[0-9]{2}([.][0-9]{1,6})?)?)?'
        ~ '([+-][0-9]{2}(:?[0-9]{2})?)?)?$'
    ) -%}
    {%- if value is string -%}
        {%- set text = value | trim -%}
        {%- if text[-1:] in ('Z', 'z') -%}
            {%- set text = text[:-1] ~ '+00:00' -%}
        {%- endif -%}
        {%- if not modules.re.match(iso, text) -%}
            {{- exceptions.raise_compiler_error(
                name ~ " is not an ISO-8601 timestamp: '" ~ value ~ "'"
            ) -}}
        {%- endif -%}
        {%- set parsed = dt.datetime.fromisoformat(text) -%}
    {%- elif value.hour is defined -%}
        {%- set parsed = value -%}
    {%- elif value.year is defined -%}
        {%- set parsed = dt.datetime(value.year, value.month, value.day) -%}
    {%- else -%}
        {{- exceptions.raise_compiler_error(
            name ~ " is not an ISO-8601 timestamp: '" ~ value ~ "'"
        ) -}}
    {%- endif -%}
    {%- if parsed.tzinfo is none -%}
        {%- set parsed = parsed.replace(tzinfo=modules.pytz.utc) -%}
    {%- endif -%}
    {{- return(parsed.astimezone(modules.pytz.utc)) -}}
{%- endmacro %}

{#- Predicate: a timestamptz column lies in the window's hours (true without
    a window). -#}
{% macro window_hours(column) -%}
    {%- set window = chargeback_window() -%}
    {%- if window is none -%}
        true
    {%- else -%}
        ({{ column }} >= timestamptz '{{ window.start }}'
        and {{ column }} < timestamptz '{{ window.end }}')
    {%- endif -%}
{%- endmacro %}

{#- Predicate: a column lies in the months the window touches (true without
    a window). data_type 'date' compares a month's first day (e.g.
    invoice_month); 'timestamptz' compares instants (e.g. hour_start) with UTC
    month boundaries. -#}
{% macro window_months(column, data_type='date') -%}
    {%- set window = chargeback_window() -%}
    {%- if window is none -%}
        true
    {%- elif data_type == 'date' -%}
        ({{ column }} >= date '{{ window.first_month }}'
        and {{ column }} < date '{{ window.end_month }}')
    {%- elif data_type == 'timestamptz' -%}
        ({{ column }} >= timestamptz '{{ window.first_month }} 00:00:00+00:00'
        and {{ column }} < timestamptz '{{ window.end_month }} 00:00:00+00:00')
    {%- else -%}
        {{- exceptions.raise_compiler_error(
            "window_months: data_type must be 'date' or 'timestamptz', got "
            ~ data_type
        ) -}}
    {%- endif -%}
{%- endmacro %}

{#- Predicate: a column lies in the whole UTC days the window touches (true
    without a window); data_type as for window_months. -#}
{% macro window_days(column, data_type='date') -%}
    {%- set window = chargeback_window() -%}
    {%- if window is none -%}
        true
    {%- elif data_type == 'date' -%}
        ({{ column }} >= date '{{ window.first_day }}'
        and {{ column }} < date '{{ window.end_day }}')
    {%- elif data_type == 'timestamptz' -%}
        ({{ column }} >= timestamptz '{{ window.first_day }} 00:00:00+00:00'
        and {{ column }} < timestamptz '{{ window.end_day }} 00:00:00+00:00')
    {%- else -%}
        {{- exceptions.raise_compiler_error(
            "window_days: data_type must be 'date' or 'timestamptz', got "
            ~ data_type
        ) -}}
    {%- endif -%}
{%- endmacro %}

{#- Predicate selecting the rows a windowed model owns in this run, from the
    model's meta: window_column and window_grain ('hour': a timestamptz in the
    window's hours; 'day': a date, a UTC day the window touches; 'month': a
    date, the first day of a month the window touches). -#}
{% macro window_predicate(meta) -%}
    {%- set column = meta.get('window_column') -%}
    {%- set grain = meta.get('window_grain', 'hour') -%}
    {%- if column is none -%}
        {{- exceptions.raise_compiler_error("meta.window_column is not set") -}}
    {%- elif grain == 'hour' -%}
        {{ window_hours(column) }}
    {%- elif grain == 'day' -%}
        {{ window_days(column, 'date') }}
    {%- elif grain == 'month' -%}
        {{ window_months(column, 'date') }}
    {%- else -%}
        {{- exceptions.raise_compiler_error(
            "meta.window_grain must be 'hour', 'day' or 'month', got " ~ grain
        ) -}}
    {%- endif -%}
{%- endmacro %}

{#- post-hook of every model (dbt_project.yml): refresh a table's planner
    statistics after a large write (no window, or a window of a day or more),
    so the next models and tests plan for the new rows. Small hourly windows
    leave it to autovacuum: an hourly run shouldn't cost more as history grows.
-#}
{% macro analyze_after_large_write() -%}
    {%- set window = chargeback_window() -%}
    {%- if config.get('materialized') in ('windowed', 'table')
        and (window is none or window.hours >= 24) -%}
        analyze {{ this }}
    {%- endif -%}
{%- endmacro %}

{% macro secure_for_readers() -%}
    {#- docs/ACCESS.md: row-level security and grants for the readers, in the model's transaction -#}
    {%- if this.schema == 'staging' -%}
        {#- staging views read raw and config as the pipeline: readers get only those marked readable -#}
        {%- if config.meta_get('readable_by_readers') -%}
            grant select on {{ this }} to chargeback_bi
        {%- endif -%}
    {%- elif config.get('materialized') in ('windowed', 'table', 'view') -%}
        {#- meta readers: all -- reference data every reader may see whole (the meter catalogue) -#}
        select access.secure_relation('{{ this }}'::regclass
            {%- if config.meta_get('readers') == 'all' %}, 'true'{% endif %})
    {%- endif -%}
{%- endmacro %}
