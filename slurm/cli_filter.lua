-- Slurm cli_filter (CliFilterPlugins=cli_filter/lua, this file as /etc/slurm/cli_filter.lua):
-- at sbatch/salloc/srun time, ask qlam-hpc whether the submitting user's QLAM login will
-- outlive the job, and refuse the submission with advice when it will not. Users who do not
-- use QLAM (qlam-hpc exits 40: no configuration) and jobs without --time pass untouched.
--
-- Adjust QLAM_HPC to where qlam-hpc is installed. Set QLAM_CHECK_ENFORCE = false to only warn.

local QLAM_HPC = "/usr/local/bin/qlam-hpc"
local QLAM_CHECK_ENFORCE = true

local function shell_quote(s)
    return "'" .. string.gsub(s, "'", "'\\''") .. "'"
end

function slurm_cli_setup_defaults(options, early_pass)
    return slurm.SUCCESS
end

function slurm_cli_pre_submit(options, pack_offset)
    local walltime = options["time"]
    if walltime == nil or walltime == "" or walltime == "0" then
        return slurm.SUCCESS
    end
    local cmd = QLAM_HPC .. " -q check --time " .. shell_quote(walltime)
    local begin = options["begin"]
    if begin ~= nil and begin ~= "" and string.match(begin, "^now%+(%d+)$") then
        cmd = cmd .. " --begin " .. string.match(begin, "^now%+(%d+)$")
    end
    local pipe = io.popen(cmd .. " 2>&1; echo \"exit=$?\"")
    local output = pipe:read("*a")
    pipe:close()
    local code = tonumber(string.match(output, "exit=(%d+)%s*$"))
    if code == 41 then
        local message = string.gsub(output, "exit=%d+%s*$", "")
        slurm.log_error("qlam-hpc: %s", message)
        if QLAM_CHECK_ENFORCE then
            return slurm.ERROR
        end
    end
    return slurm.SUCCESS
end

function slurm_cli_post_submit(offset, job_id, step_id)
    return slurm.SUCCESS
end
