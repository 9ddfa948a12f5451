{#-
    Data tests on a windowed model check only the rows this run rebuilt, so a
    test costs in proportion to the window, not to the history. A model opts in
    with meta.window_column / meta.window_grain (the same meta its delete
    pre_hook uses); without window vars the tests see every row. A test's own
    `where` config is kept and combined.
-#}
{% macro get_where_subquery(relation) -%}
    {%- set conditions = [] -%}
    {%- set where = config.get('where', '') -%}
    {%- if where -%}
        {%- do conditions.append('(' ~ where ~ ')') -%}
    {%- endif -%}
    {%- set meta = _chargeback_window_meta(relation) -%}
    {%- if meta and chargeback_window() is not none -%}
        {%- do conditions.append(window_predicate(meta) | trim) -%}
    {%- endif -%}
    {%- if conditions -%}
        {%- set filtered -%}
            (
                select * from {{ relation }}
                where {{ conditions | join(' and ') }}
            ) dbt_subquery
        {%- endset -%}
        {%- do return(filtered) -%}
    {%- else -%}
        {%- do return(relation) -%}
    {%- endif -%}
{%- endmacro %}

{#- meta of the windowed model behind `relation`, or none. -#}
{% macro _chargeback_window_meta(relation) -%}
    {%- if not execute or relation.identifier is not defined -%}
        {{- return(none) -}}
    {%- endif -%}
    {%- for node in graph.nodes.values() -%}
        {%- if node.resource_type == 'model'
            and node.schema == relation.schema
            and (node.alias or node.name) == relation.identifier
            and node.config.meta.get('window_column') -%}
            {{- return(node.config.meta) -}}
        {%- endif -%}
    {%- endfor -%}
    {{- return(none) -}}
{%- endmacro %}
