/* lua/src/main.c: `pio`, the host executable.
 *
 * Lua 5.4 embedded the way lua.c does it, only smaller: run a script with
 * `arg` and `...`, run -e chunks, enter the REPL, or hand a subcommand
 * (`pio generate ...`) to lua/pio/cli.lua. The bindings are linked in and
 * registered as package.preload["pio.core"], so `require "pio"` finds the
 * library in the source tree's lua/ dir (or $PIO_LUA_DIR) from any cwd. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <readline/history.h>
#include <readline/readline.h>

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>

#include "lpio.h"

#ifndef PIO_VERSION
#define PIO_VERSION "unknown"
#endif
#ifndef PIO_LUA_DIR
#define PIO_LUA_DIR "lua"
#endif

#define PROGNAME "pio"
#define PROMPT "> "
#define PROMPT2 ">> "
#define HISTORY_FILE ".pio_history"
#define HISTORY_MAX 1000
#define EOFMARK "<eof>" /* the tail of the syntax error of an unfinished chunk */

/* ---- protected calls, errors and Ctrl-C --------------------------------------- */

/* Signal handlers get no user data, so the state they interrupt lives here. */
static lua_State *g_L;

/* Raising an error inside a signal handler is not safe; the handler sets this
 * hook instead and the error is raised at the next Lua instruction. */
static void interrupt_hook(lua_State *L, lua_Debug *ar) {
    (void)ar;
    lua_sethook(L, NULL, 0, 0);
    luaL_error(L, "interrupted!");
}

static void on_sigint_eval(int sig) {
    /* A second Ctrl-C kills the process: it may be stuck in C, where the hook never runs. */
    signal(sig, SIG_DFL);
    lua_sethook(g_L, interrupt_hook, LUA_MASKCALL | LUA_MASKRET | LUA_MASKLINE | LUA_MASKCOUNT, 1);
}

/* Message handler: turns any error object into a string, with a traceback
 * when upvalue 1 is true (scripts), without one in the REPL. */
static int msghandler(lua_State *L) {
    const char *msg = lua_tostring(L, 1);
    if (msg == NULL) {
        if (luaL_callmeta(L, 1, "__tostring") && lua_type(L, -1) == LUA_TSTRING)
            return 1;
        msg = lua_pushfstring(L, "(error object is a %s value)", luaL_typename(L, 1));
    }
    if (lua_toboolean(L, lua_upvalueindex(1)))
        luaL_traceback(L, L, msg, 1);
    else
        lua_pushstring(L, msg);
    return 1;
}

/* Calls the function below narg arguments with Ctrl-C armed to interrupt it. */
static int docall(lua_State *L, int narg, int nres, int traceback) {
    int base = lua_gettop(L) - narg;
    lua_pushboolean(L, traceback);
    lua_pushcclosure(L, msghandler, 1);
    lua_insert(L, base);
    g_L = L;
    signal(SIGINT, on_sigint_eval);
    int status = lua_pcall(L, narg, nres, base);
    signal(SIGINT, SIG_DFL);
    lua_sethook(L, NULL, 0, 0); /* a Ctrl-C that came as the call returned */
    lua_remove(L, base);
    return status;
}

/* Prints the error on top of the stack (if status says there is one) and pops it. */
static int report(lua_State *L, int status, const char *prefix) {
    if (status != LUA_OK) {
        const char *msg = lua_tostring(L, -1);
        fprintf(stderr, "%s%s\n", prefix, msg ? msg : "(error object is not a string)");
        fflush(stderr);
        lua_pop(L, 1);
    }
    return status;
}

/* ---- state setup ----------------------------------------------------------------- */

/* Prepends <lua dir>/?.lua;<lua dir>/?/init.lua to package.path. */
static void set_lua_path(lua_State *L) {
    const char *dir = getenv("PIO_LUA_DIR");
    if (dir == NULL || *dir == '\0')
        dir = PIO_LUA_DIR;
    lua_getglobal(L, "package");
    lua_getfield(L, -1, "path");
    lua_pushfstring(L, "%s/?.lua;%s/?/init.lua;%s", dir, dir, lua_tostring(L, -1));
    lua_setfield(L, -3, "path");
    lua_pop(L, 2);
}

static void open_state(lua_State *L) {
    luaL_openlibs(L);
    luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_PRELOAD_TABLE);
    lua_pushcfunction(L, luaopen_pio_core);
    lua_setfield(L, -2, "pio.core");
    lua_pop(L, 1);
    set_lua_path(L);
}

/* Pushes require(name) in protected mode; on failure reports it and returns false. */
static int require_module(lua_State *L, const char *name) {
    lua_getglobal(L, "require");
    lua_pushstring(L, name);
    return report(L, docall(L, 1, 1, 1), PROGNAME ": ") == LUA_OK;
}

/* ---- subcommands (lua/pio/cli.lua) ------------------------------------------------ */

/* Only a plain word can name a subcommand, so `pio x.lua` never loads cli.lua. */
static int is_word(const char *s) {
    if (*s == '\0' || *s == '-')
        return 0;
    return strspn(s, "abcdefghijklmnopqrstuvwxyz0123456789-_") == strlen(s);
}

/* 1 if cli.commands[name] exists, 0 if not, -1 if cli.lua failed to load. */
static int is_command(lua_State *L, const char *name) {
    if (!require_module(L, "pio.cli"))
        return -1;
    int found = lua_getfield(L, -1, "commands") == LUA_TTABLE &&
                lua_getfield(L, -1, name) != LUA_TNIL;
    lua_settop(L, 0);
    return found;
}

/* require("pio.cli").main({argv[1], ...}); its result is the exit code. */
static int run_command(lua_State *L, int argc, char **argv) {
    if (!require_module(L, "pio.cli"))
        return 1;
    lua_getfield(L, -1, "main");
    lua_createtable(L, argc - 1, 0);
    for (int i = 1; i < argc; i++) {
        lua_pushstring(L, argv[i]);
        lua_rawseti(L, -2, i);
    }
    if (report(L, docall(L, 1, 1, 1), PROGNAME ": ") != LUA_OK)
        return 1;
    if (lua_isinteger(L, -1))
        return (int)lua_tointeger(L, -1);
    return lua_isnil(L, -1) || lua_toboolean(L, -1) ? 0 : 1; /* nil or true: success */
}

/* ---- command line ----------------------------------------------------------------- */

struct options {
    int end;         /* argv index where the options end */
    int script;      /* argv index of the script, 0 if none */
    int n_chunks;    /* how many -e */
    int interactive; /* -i */
    int help, version;
};

static void print_usage(lua_State *L) {
    printf("usage: " PROGNAME " [options] [script [args]]\n"
           "       " PROGNAME " <command> [command options]\n"
           "\n"
           "Modes:\n"
           "  pio                    the REPL when stdin is a terminal, else run stdin as a script\n"
           "  pio script.lua [args]  run a Lua script; it gets `arg` and `...` as with lua\n"
           "  pio - [args]           run a script read from stdin\n"
           "\n"
           "Options:\n"
           "  -e code        run a chunk of Lua (may repeat; runs before the script)\n"
           "  -i             enter the REPL after the -e chunks and the script\n"
           "  -h, --help     print this help\n"
           "  -v, --version  print the version\n"
           "  --             stop handling options\n"
           "\n"
           "Environment:\n"
           "  PIO_LUA_DIR    where `require \"pio\"` looks (default " PIO_LUA_DIR ")\n");
    /* The subcommands describe themselves, so a new one shows up here untouched. */
    lua_getglobal(L, "require");
    lua_pushliteral(L, "pio.cli");
    if (lua_pcall(L, 1, 1, 0) == LUA_OK && lua_getfield(L, -1, "usage") == LUA_TFUNCTION &&
        lua_pcall(L, 0, 1, 0) == LUA_OK && lua_isstring(L, -1))
        printf("\n%s", lua_tostring(L, -1));
    lua_settop(L, 0);
}

/* Prints `pio: <before>'<arg>'<after>` and the usage hint; returns exit code 2. */
static int usage_error(const char *before, const char *arg, const char *after) {
    fprintf(stderr, "%s: %s'%s'%s\nTry '%s --help' for usage.\n", PROGNAME, before, arg, after,
            PROGNAME);
    return 2;
}

/* Scans the options before the script name as lua.c does. Returns 0, or the
 * exit code for a bad command line. */
static int collect_args(int argc, char **argv, struct options *o) {
    int i;
    for (i = 1; i < argc && argv[i][0] == '-'; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--") == 0) {
            i++;
            break;
        }
        if (strcmp(a, "-") == 0) /* the script is stdin */
            break;
        if (strcmp(a, "-i") == 0) {
            o->interactive = 1;
        } else if (strncmp(a, "-e", 2) == 0) {
            if (a[2] == '\0' && ++i >= argc)
                return usage_error("option ", "-e", " needs an argument");
            o->n_chunks++;
        } else if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
            o->help = 1;
        } else if (strcmp(a, "-v") == 0 || strcmp(a, "--version") == 0) {
            o->version = 1;
        } else {
            return usage_error("unknown option ", a, "");
        }
    }
    o->end = i;
    o->script = i < argc ? i : 0;
    return 0;
}

/* The global `arg` as lua gives it: arg[0] is the script, arguments after it
 * are positive, the interpreter and its options negative. */
static void create_arg_table(lua_State *L, int argc, char **argv, int script) {
    lua_createtable(L, argc - script - 1 > 0 ? argc - script - 1 : 0, script + 1);
    for (int i = 0; i < argc; i++) {
        lua_pushstring(L, argv[i]);
        lua_rawseti(L, -2, i - script);
    }
    lua_setglobal(L, "arg");
}

/* Runs the -e chunks among argv[1 .. end-1] in order; stops at the first error. */
static int run_chunks(lua_State *L, char **argv, int end) {
    for (int i = 1; i < end; i++) {
        if (strncmp(argv[i], "-e", 2) != 0)
            continue;
        const char *code = argv[i][2] ? argv[i] + 2 : argv[++i];
        int status = luaL_loadbuffer(L, code, strlen(code), "=(command line)");
        if (status == LUA_OK)
            status = docall(L, 0, 0, 1);
        if (report(L, status, PROGNAME ": ") != LUA_OK)
            return status;
    }
    return LUA_OK;
}

/* Runs argv[script] (stdin for "-") with `...` = the arguments after it. */
static int run_script(lua_State *L, int argc, char **argv, int script) {
    const char *fname = argv[script];
    if (strcmp(fname, "-") == 0 && strcmp(argv[script - 1], "--") != 0)
        fname = NULL; /* luaL_loadfile reads stdin */
    int status = luaL_loadfile(L, fname);
    if (status == LUA_OK) {
        int n = argc - script - 1;
        luaL_checkstack(L, n, "too many arguments to script");
        for (int i = script + 1; i < argc; i++)
            lua_pushstring(L, argv[i]);
        status = docall(L, n, 0, 1);
    }
    return report(L, status, PROGNAME ": ");
}

/* `pio < file`: stdin is the script, as with lua. */
static int run_stdin(lua_State *L) {
    int status = luaL_loadfile(L, NULL);
    if (status == LUA_OK)
        status = docall(L, 0, 0, 1);
    return report(L, status, PROGNAME ": ");
}

/* ---- the REPL ------------------------------------------------------------------------ */

#define READ_EOF (-1)    /* end of input: leave the REPL */
#define READ_CANCEL (-2) /* Ctrl-C at the prompt: drop the statement */

static volatile sig_atomic_t g_prompt_cancelled;

/* Ctrl-C at the prompt: readline re-raises it to us at a safe point; rl_done
 * makes it return the line, which the REPL then drops. */
static void on_sigint_prompt(int sig) {
    (void)sig;
    g_prompt_cancelled = 1;
    rl_done = 1;
}

/* readline only looks at rl_done while waiting for input if an event hook is set. */
static int rl_idle(void) {
    return 0;
}

static char *history_path(void) {
    static char path[4096];
    const char *home = getenv("HOME");
    if (home == NULL || *home == '\0')
        return NULL;
    if (snprintf(path, sizeof path, "%s/" HISTORY_FILE, home) >= (int)sizeof path)
        return NULL;
    return path;
}

/* Best effort: a missing or unwritable history file is not worth a message.
 * atexit, so that os.exit() in the REPL keeps the history too. */
static void save_history(void) {
    const char *path = history_path();
    if (path != NULL)
        write_history(path);
}

/* Pushes the next line without its newline; returns 1, READ_EOF or READ_CANCEL. */
static int push_line(lua_State *L, int tty, int first) {
    char *line = NULL;
    if (tty) {
        g_prompt_cancelled = 0;
        signal(SIGINT, on_sigint_prompt);
        line = readline(first ? PROMPT : PROMPT2);
        signal(SIGINT, SIG_DFL);
        if (g_prompt_cancelled) {
            free(line);
            return READ_CANCEL;
        }
    } else {
        size_t cap = 0;
        if (getline(&line, &cap, stdin) < 0) {
            free(line);
            line = NULL;
        }
    }
    if (line == NULL)
        return READ_EOF;
    size_t len = strlen(line);
    while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r'))
        len--;
    lua_pushlstring(L, line, len);
    free(line);
    return 1;
}

/* An unfinished chunk fails to compile with a syntax error at "<eof>"; pops that message. */
static int incomplete(lua_State *L, int status) {
    if (status != LUA_ERRSYNTAX)
        return 0;
    size_t len;
    const char *msg = lua_tolstring(L, -1, &len);
    size_t mark = sizeof(EOFMARK) - 1;
    if (len < mark || strcmp(msg + len - mark, EOFMARK) != 0)
        return 0;
    lua_pop(L, 1);
    return 1;
}

static void remember(int tty, const char *statement) {
    if (tty && statement[0] != '\0')
        add_history(statement);
}

/* Reads and compiles one statement. Like lua.c 5.4, a line is first tried as
 * `return <line>`, so that an expression prints its values; otherwise lines are
 * added while the chunk is incomplete. Leaves the function or the error message
 * alone on the stack and returns the load status, READ_EOF or READ_CANCEL. */
static int load_statement(lua_State *L, int tty) {
    lua_settop(L, 0);
    int got = push_line(L, tty, 1);
    if (got != 1)
        return got;
    const char *line = lua_tostring(L, 1);
    const char *ret = lua_pushfstring(L, "return %s", line);
    int status = luaL_loadbuffer(L, ret, strlen(ret), "=stdin");
    lua_remove(L, 2);
    if (status == LUA_OK) {
        remember(tty, line);
        lua_remove(L, 1);
        return status;
    }
    lua_pop(L, 1);
    for (;;) { /* stack: the statement so far */
        size_t len;
        const char *chunk = lua_tolstring(L, 1, &len);
        status = luaL_loadbuffer(L, chunk, len, "=stdin");
        if (!incomplete(L, status))
            break;
        got = push_line(L, tty, 0);
        if (got == READ_CANCEL)
            return got;
        if (got == READ_EOF) { /* compile it again for its "<eof>" message */
            status = luaL_loadbuffer(L, chunk, len, "=stdin");
            break;
        }
        lua_pushliteral(L, "\n");
        lua_insert(L, -2);
        lua_concat(L, 3);
    }
    remember(tty, lua_tostring(L, 1));
    lua_remove(L, 1);
    return status;
}

/* The REPL's helpers (lua/pio/repl.lua) live in the registry under this key. */
#define REPL_KEY "pio.repl"

/* Pushes repl[name] (a function) and returns 1, or pushes nothing and returns 0. */
static int push_repl_function(lua_State *L, const char *name) {
    if (lua_getfield(L, LUA_REGISTRYINDEX, REPL_KEY) != LUA_TTABLE) {
        lua_pop(L, 1);
        return 0;
    }
    int ok = lua_getfield(L, -1, name) == LUA_TFUNCTION;
    lua_remove(L, -2);
    if (!ok)
        lua_pop(L, 1);
    return ok;
}

/* Prints the values left on the stack readably: repl.show (tables expanded,
 * pio objects by their __tostring), else the global print. */
static void print_results(lua_State *L) {
    int n = lua_gettop(L);
    if (n == 0)
        return;
    luaL_checkstack(L, LUA_MINSTACK, "too many results to print");
    if (!push_repl_function(L, "show"))
        lua_getglobal(L, "print");
    lua_insert(L, 1);
    if (lua_pcall(L, n, 0, 0) != LUA_OK)
        fprintf(stderr, "error printing the results (%s)\n", lua_tostring(L, -1));
    lua_settop(L, 0);
}

/* ---- tab completion: readline asks, repl.complete answers ---------------------------- */

static lua_State *g_repl_L;

/* readline calls this with state 0 first, then 1, 2, ... until it returns NULL. */
static char *completion_generator(const char *text, int state) {
    static lua_Integer next, count;
    lua_State *L = g_repl_L;
    if (state == 0) {
        count = next = 0;
        lua_pushnil(L);
        lua_setfield(L, LUA_REGISTRYINDEX, REPL_KEY ".matches");
        if (!push_repl_function(L, "complete"))
            return NULL;
        lua_pushstring(L, text);
        if (lua_pcall(L, 1, 1, 0) != LUA_OK || !lua_istable(L, -1)) {
            lua_pop(L, 1);
            return NULL;
        }
        count = (lua_Integer)lua_rawlen(L, -1);
        lua_setfield(L, LUA_REGISTRYINDEX, REPL_KEY ".matches");
    }
    if (next >= count)
        return NULL;
    lua_getfield(L, LUA_REGISTRYINDEX, REPL_KEY ".matches");
    lua_rawgeti(L, -1, ++next);
    const char *match = lua_tostring(L, -1);
    char *copy = match ? strdup(match) : NULL; /* readline frees it */
    lua_pop(L, 2);
    return copy;
}

static char **complete_names(const char *text, int start, int end) {
    (void)start;
    (void)end;
    rl_attempted_completion_over = 1;     /* names, never file names */
    rl_completion_append_character = '\0'; /* "pio.strategy" then "." or ":" */
    return rl_completion_matches(text, completion_generator);
}

/* Words end at anything that cannot be inside a dotted name: "m:ge" and
 * "pio.strategy.kv.p" are completed whole. */
static char word_breaks[] = " \t\n\"\\'`@$><=;|&{(,+-*/%^#~[]}";

static void repl(lua_State *L) {
    int tty = isatty(STDIN_FILENO);
    if (tty) {
        printf(PROGNAME " " PIO_VERSION " (Lua 5.4) — type a Lua statement; Ctrl-D to exit\n");
        fflush(stdout);
        rl_readline_name = PROGNAME;
        rl_event_hook = rl_idle;
        rl_attempted_completion_function = complete_names;
        rl_completer_word_break_characters = word_breaks;
        stifle_history(HISTORY_MAX);
        const char *path = history_path();
        if (path != NULL)
            read_history(path);
        atexit(save_history);
    }
    /* Only the REPL has a global `pio`: scripts say `local pio = require "pio"`. */
    if (require_module(L, "pio"))
        lua_setglobal(L, "pio");
    /* help(x), readable printing and completion (lua/pio/repl.lua) */
    g_repl_L = L;
    if (require_module(L, "pio.repl")) {
        lua_getfield(L, -1, "help");
        lua_setglobal(L, "help");
        lua_setfield(L, LUA_REGISTRYINDEX, REPL_KEY);
    }
    for (;;) {
        int status = load_statement(L, tty);
        if (status == READ_EOF)
            break;
        if (status == READ_CANCEL) /* readline already moved to a new line */
            continue;
        if (status == LUA_OK)
            status = docall(L, 0, LUA_MULTRET, 0);
        if (status == LUA_OK)
            print_results(L);
        else
            report(L, status, "");
        fflush(stdout);
    }
    lua_settop(L, 0);
    if (tty)
        putchar('\n');
    fflush(stdout);
}

/* ---- main ------------------------------------------------------------------------------ */

static int exit_code(lua_State *L, int code) {
    lua_pushinteger(L, code);
    return 1;
}

/* Everything runs inside a protected call, so that even an out-of-memory
 * error while setting up is reported instead of aborting. Returns the exit code. */
static int pmain(lua_State *L) {
    int argc = (int)lua_tointeger(L, 1);
    char **argv = (char **)lua_touserdata(L, 2);
    lua_settop(L, 0);
    open_state(L);

    if (argc > 1 && is_word(argv[1])) {
        int cmd = is_command(L, argv[1]);
        if (cmd < 0)
            return exit_code(L, 1);
        if (cmd)
            return exit_code(L, run_command(L, argc, argv));
        if (access(argv[1], F_OK) != 0)
            return exit_code(L, usage_error("unknown command or file ", argv[1], ""));
    }

    struct options o = {0};
    int code = collect_args(argc, argv, &o);
    if (code == 0 && o.help)
        print_usage(L);
    else if (code == 0 && o.version)
        printf(PROGNAME " " PIO_VERSION "\n");
    if (code != 0 || o.help || o.version)
        return exit_code(L, code);

    create_arg_table(L, argc, argv, o.script);
    if (run_chunks(L, argv, o.end) != LUA_OK)
        return exit_code(L, 1);
    if (o.script && run_script(L, argc, argv, o.script) != LUA_OK)
        return exit_code(L, 1);

    if (o.interactive) {
        repl(L);
    } else if (!o.script && o.n_chunks == 0) {
        if (isatty(STDIN_FILENO))
            repl(L);
        else if (run_stdin(L) != LUA_OK)
            return exit_code(L, 1);
    }
    fflush(stdout);
    return exit_code(L, 0);
}

int main(int argc, char **argv) {
    lua_State *L = luaL_newstate();
    if (L == NULL) {
        fprintf(stderr, "%s: cannot create the Lua state: not enough memory\n", PROGNAME);
        return 1;
    }
    lua_pushcfunction(L, pmain);
    lua_pushinteger(L, argc);
    lua_pushlightuserdata(L, argv);
    int status = lua_pcall(L, 2, 1, 0);
    int code = status == LUA_OK ? (int)lua_tointeger(L, -1) : 1;
    report(L, status, PROGNAME ": ");
    lua_close(L);
    return code;
}
