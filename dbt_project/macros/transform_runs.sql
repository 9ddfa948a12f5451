{#-
    on-run-end hook (dbt_project.yml): record this dbt run in
    pipeline.transform_runs, so chargeback.freshness knows whether a month's
    marts are current. chargeback.engine.transform.build records its own runs (it can
    also record a run dbt could not start) and turns this off with
    var('chargeback_record_run') false; dbt run by hand (or by another
    orchestrator) is recorded here.
-#}
{% macro chargeback_record_transform_run(results) -%}
    {%- if execute and var('chargeback_record_run', true)
          and invocation_args_dict.get('which') in ('build', 'run', 'test') -%}
        {%- set window = chargeback_window() -%}
        {%- set failures = [] -%}
        {%- for result in results
              if result.status in ('error', 'fail', 'runtime error') -%}
            {%- do failures.append(
                result.node.resource_type ~ ' ' ~ result.node.name ~ ': '
                ~ (result.message or result.status) | string
            ) -%}
        {%- endfor -%}
        {#- what the run built, as chargeback.engine.transform records it:
            the select, then --exclude and --selector when given -#}
        {%- set parts = [] -%}
        {%- for flag, key in [('', 'select'), ('--exclude ', 'exclude'),
                              ('--selector ', 'selector')] -%}
            {%- set value = invocation_args_dict.get(key) -%}
            {%- if value -%}
                {%- do parts.append(flag ~ (
                    value if value is string else value | join(' ')
                )) -%}
            {%- endif -%}
        {%- endfor -%}
        {%- set selection = parts | join(' ') -%}
        insert into pipeline.transform_runs (
            window_start, window_end, selection, status, started_at,
            failures, invoked_by
        )
        values (
            {{ _chargeback_sql_text(window.start if window else none) }}::timestamptz,
            {{ _chargeback_sql_text(window.end if window else none) }}::timestamptz,
            {{ _chargeback_sql_text(selection or none) }},
            '{{ "failed" if failures else "succeeded" }}',
            {{ _chargeback_sql_text(run_started_at.isoformat()) }}::timestamptz,
            array[
                {%- for line in failures -%}
                    {{ _chargeback_sql_text(line) }}{{ ", " if not loop.last }}
                {%- endfor -%}
            ]::text[],
            'dbt'
        )
    {%- endif -%}
{%- endmacro %}

{% macro _chargeback_sql_text(value) -%}
    {%- if value is none -%}
        null
    {%- else -%}
        '{{ value | string | replace("'", "''") }}'
    {%- endif -%}
{%- endmacro %}
