{#-
    The windowed materialization (dbt_project.yml): a table whose rows of the run
    window are replaced in one transaction, written once.

    - A new table, a view in its place, or --full-refresh: built as dbt's table
      materialization builds one (contract first, then the rows, indexes after),
      swapped in for the old one.
    - A window (vars window_start / window_end): the rows the model's meta
      window_column / window_grain give to the window are deleted, and the
      model's rows inserted straight from its select: no temporary copy, which
      dbt's incremental materialization writes first and copies after.
    - No window (every row): the table is truncated, its indexes dropped, the
      rows inserted, and the indexes built once over them. Its views, grants
      and row-level security stay (it is the same table); readers wait for the
      commit instead of reading the old rows meanwhile.

    The model's columns must be the table's, in any order; anything else fails
    the model, naming the columns (what on_schema_change: fail did).
-#}
{% materialization windowed, adapter='postgres' %}

    {%- set existing = load_cached_relation(this) -%}
    {%- set target = this.incorporate(type='table') -%}
    {%- set intermediate = make_intermediate_relation(target) -%}
    {%- set backup = make_backup_relation(target, 'table' if existing is none else existing.type) -%}
    {%- set window = chargeback_window() -%}

    {{ drop_relation_if_exists(load_cached_relation(intermediate)) }}
    {{ drop_relation_if_exists(load_cached_relation(backup)) }}

    {{ run_hooks(pre_hooks, inside_transaction=False) }}
    {{ run_hooks(pre_hooks, inside_transaction=True) }}

    {%- set to_drop = [] -%}
    {%- if existing is none or existing.is_view or should_full_refresh() -%}
        {%- set built = target if existing is none else intermediate -%}
        {% call statement('main') -%}
            {{ get_create_table_as_sql(False, built, sql) }}
        {%- endcall %}
        {% do create_indexes(built) %}
        {%- if existing is not none -%}
            {% do adapter.rename_relation(existing, backup) %}
            {% do adapter.rename_relation(intermediate, target) %}
            {% do to_drop.append(backup) %}
        {%- endif -%}
    {%- else -%}
        {%- set columns = _windowed_columns(target, sql) -%}
        {%- if window is none -%}
            {% call statement('empty') -%}
                truncate {{ target }};
                {{ _windowed_drop_indexes(target) }}
            {%- endcall %}
        {%- else -%}
            {% call statement('delete_window') -%}
                delete from {{ target }}
                where {{ window_predicate(config.get('meta')) }}
            {%- endcall %}
        {%- endif -%}
        {% call statement('main') -%}
            insert into {{ target }} ({{ columns | join(', ') }})
            select {{ columns | join(', ') }}
            from (
                {{ sql }}
            ) as model_rows
        {%- endcall %}
        {%- if window is none -%}
            {% do create_indexes(target) %}
        {%- endif -%}
    {%- endif -%}

    {% do persist_docs(target, model) %}
    {{ run_hooks(post_hooks, inside_transaction=True) }}
    {% do adapter.commit() %}
    {%- for relation in to_drop -%}
        {% do adapter.drop_relation(relation) %}
    {%- endfor -%}
    {{ run_hooks(post_hooks, inside_transaction=False) }}

    {{ return({'relations': [target]}) }}

{% endmaterialization %}


{#- The table's column names, quoted, after checking that the model selects
    exactly those (names only: the insert casts to the table's types, and a
    contract checks the types where the model has one). -#}
{% macro _windowed_columns(relation, sql) -%}
    {%- set table_columns = adapter.get_columns_in_relation(relation) | map(attribute='name') | list -%}
    {%- set model_columns = get_column_schema_from_query(sql) | map(attribute='name') | list -%}
    {%- set missing = table_columns | reject('in', model_columns) | list -%}
    {%- set extra = model_columns | reject('in', table_columns) | list -%}
    {%- if missing or extra -%}
        {{ exceptions.raise_compiler_error(
            "the columns of " ~ relation ~ " changed (missing from the model: "
            ~ (missing | join(', ') or 'none') ~ "; new in the model: "
            ~ (extra | join(', ') or 'none') ~ "): rebuild it with --full-refresh"
        ) }}
    {%- endif -%}
    {%- set quoted = [] -%}
    {%- for name in table_columns -%}
        {%- do quoted.append(adapter.quote(name)) -%}
    {%- endfor -%}
    {{- return(quoted) -}}
{%- endmacro %}


{#- Drop the table's plain indexes (not those of its constraints): a full
    rebuild writes the rows first and builds them again after. -#}
{% macro _windowed_drop_indexes(relation) -%}
    {%- set found = run_query(
        "select format('%I.%I', n.nspname, i.relname) from pg_index as x"
        ~ " join pg_class as i on i.oid = x.indexrelid"
        ~ " join pg_namespace as n on n.oid = i.relnamespace"
        ~ " where x.indrelid = '" ~ relation ~ "'::regclass"
        ~ " and not exists (select from pg_constraint as c where c.conindid = x.indexrelid)"
    ) -%}
    {%- for row in found -%}
        drop index {{ row[0] }};
    {% endfor -%}
{%- endmacro %}
